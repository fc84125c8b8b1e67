"""The two moving parts a ring schedule is made of.

:class:`Rotation`: a payload that visits every rank, one hop forward per step (K/V in ring
attention, K then V in RSA, a sequence shard in the TP GEMMs). :class:`Relay`: one accumulator per
owner that travels one hop per step, each rank adding its partial (dK/dV in ring attention's
backward, the partial products of the TP ring's reduce-scatter), ending on its owner.
"""
from __future__ import annotations

import torch

from .driver import NOTHING, Schedule
from .tags import RELAY, ROTATION


class Rotation(Schedule):
    """A payload that visits every rank once, one hop forward per step: at step t this rank holds
    the payload of rank ``(r - t) mod N`` (:meth:`src`), which :meth:`fetch` brought during step
    t-1. Step 0 reads the caller's tensor; later steps alternate between two scratch buffers
    (receive into one while computing on the other), so the caller's tensor is never overwritten;
    or, with ``gathered`` (``[N, *payload.shape]``), every payload lands in its slot
    ``gathered[src]`` (the caller's own is copied into ``gathered[r]``). As a schedule on its own it
    calls ``visit(src, payload)`` at each step (subclasses override :meth:`compute` instead)."""

    def __init__(self, info, payload, visit=None, *, gathered=None, tag: int = ROTATION):
        self.info, self.steps, self._visit = info, info.size, visit
        self.first, self.gathered, self.tag = payload, gathered, tag
        if gathered is not None:
            gathered[info.rank].copy_(payload)
            self.scratch = ()
        else:
            self.scratch = tuple(torch.empty_like(payload) for _ in range(min(2, info.size - 1)))

    def src(self, t: int) -> int:
        return (self.info.rank - t) % self.info.size

    def payload(self, t: int) -> torch.Tensor:
        if t == 0:
            return self.first
        if self.gathered is not None:
            return self.gathered[self.src(t)]
        return self.scratch[(t - 1) % 2]

    def fetch(self, t):
        if t == 0:
            return NOTHING
        return (((self.info.next, self.payload(t - 1), self.tag),), ((self.info.prev, self.payload(t), self.tag),))

    def compute(self, t, handle):
        self._visit(self.src(t), self.payload(t))


class Relay:
    """Accumulators travelling one hop per step: at step t this rank computes the partial for rank
    :meth:`owner` ``(t) = (r - t - lag) mod N``, adds it to the accumulator of that owner (which
    the previous rank shipped after its step t-1), and ships the sum on at the start of step t+1
    (:meth:`returns`, one hop behind a :class:`Rotation` whose payload the partial came from).

    - ``lag=0`` (ring attention's dK/dV: the partial of the visiting K/V's owner): step 0 is this
      rank's own partial, kept; an accumulator starts at step 1 on the rank after its owner, and
      after the last step it makes one final hop home to its owner (with a full ring, the next
      rank), where :meth:`finish` adds it to the own partial. ``steps - 1`` hops in all; ``steps``
      may be below N (a window that stops the rotation early).
    - ``lag=1`` (the TP ring's reduce-scatter: ``steps == N``): the own partial comes last, the
      accumulators start at step 0 and reach their owner with its last step: no final hop.

    :attr:`result`: this rank's own sum (complete after :meth:`finish`). Accumulators travel in
    their own dtype, or in ``ship_dtype`` (the sum on a rank is kept in the partial's dtype).
    """

    def __init__(self, info, steps: int, *, lag: int = 0, ship_dtype=None, tag: int = RELAY):
        assert lag in (0, 1) and (lag == 0 or steps == info.size)
        self.info, self.steps, self.lag, self.ship_dtype, self.tag = info, steps, lag, ship_dtype, tag
        self.start = 1 - lag   # the step at which the accumulators start
        self.sending = {}      # step -> the accumulator leaving after that step
        self.incoming = {}     # step -> receive buffer of the accumulator arriving for that step
        self.result = None

    def owner(self, t: int) -> int:
        return (self.info.rank - t - self.lag) % self.info.size

    def returns(self, t):
        send = self.sending.pop(t, None)
        if send is None:
            return NOTHING
        self.incoming[t + 1] = buf = torch.empty_like(send)  # step t+1 (or after the last step: my own)
        if t == self.steps - 1:  # home: straight to the owner (== next when the ring is complete)
            n, r = self.info.size, self.info.rank
            return (((r - t) % n, send, self.tag),), (((r + t) % n, buf, self.tag),)
        return ((self.info.next, send, self.tag),), ((self.info.prev, buf, self.tag),)

    def _keep(self, t: int, acc: torch.Tensor) -> None:
        if self.lag and t == self.steps - 1:
            self.result = acc  # my own partial, last: the sum is complete
        elif t == 0 and not self.lag:
            self.result = acc  # my own partial, first: the rest arrives after the last step
        else:
            self.sending[t] = acc if self.ship_dtype is None else acc.to(self.ship_dtype)

    def add(self, t: int, part: torch.Tensor, handle) -> None:
        """Step ``t``'s partial ``part`` (fresh; it becomes the accumulator): adds what arrived for this
        step into it (waiting on ``handle`` for it) and keeps it to ship, or as :attr:`result`."""
        if t > self.start:
            handle.wait()  # the accumulator for this owner, sent by the previous rank
            part.add_(self.incoming.pop(t))
        self._keep(t, part)

    def buffer(self, t: int, handle, new) -> torch.Tensor:
        """Where step ``t``'s partial must be accumulated in place: a fresh ``new()`` where the
        accumulator starts (or for the own partial of ``lag=0``), else the one that arrived
        (waiting on ``handle``). For ``ship_dtype=None`` only."""
        if t > self.start:
            handle.wait()
            acc = self.incoming.pop(t)
        else:
            acc = new()
        self._keep(t, acc)
        return acc

    def finish(self) -> None:
        if not self.lag and self.steps > 1:
            self.result += self.incoming.pop(self.steps)
