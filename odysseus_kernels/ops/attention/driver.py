"""The one ring driver: every ring variant (ring forward/backward in any layout, TokenRing
forward/backward, RSA's passes) is a :class:`Schedule` run by :func:`run_schedule`.

Step ``t`` of a schedule consumes inputs that *fetch(t)* brought and produces results that
*returns(t)* ships. The driver posts, as one batched P2P exchange at the start of step ``t``, the
fetch of step ``t+1`` (prefetch) together with the returns of step ``t-1``, then runs
``compute(t, handle)``: the block compute overlaps both transfers, and ``compute`` waits on the
handle only when it needs returned data (e.g. an incoming dK/dV accumulator). On CUDA the exchange
runs on comm's stream; schedules double-buffer what they fetch so a receive never overwrites a
buffer that the current step reads (nor the caller's input).
"""
from __future__ import annotations

import torch

from ...comm import exchange

Transfers = tuple[list, list]  # (sends, recvs) of (group_rank, tensor, tag)
NOTHING: Transfers = ([], [])


class Schedule:
    """Base class; subclasses set ``steps`` and ``info`` and override what they use."""

    steps: int

    def fetch(self, t: int) -> Transfers:
        """Transfers that bring the inputs of step ``t`` (posted during step ``t-1``)."""
        return NOTHING

    def returns(self, t: int) -> Transfers:
        """Transfers that ship the results of step ``t`` (posted at the start of step ``t+1``)."""
        return NOTHING

    def compute(self, t: int, handle) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Runs after the returns of the last step have arrived."""


class Rotation(Schedule):
    """A payload that visits every rank once, one hop forward per step: at step t this rank holds
    the payload of rank ``(r - t) mod N`` (:meth:`src`). Step 0 reads the caller's tensor; later
    steps alternate between two scratch buffers (receive into one while computing on the other), so
    the caller's tensor is never overwritten. Subclasses (or ``visit(src, payload)``) say what to
    compute with it."""

    TAG = 20

    def __init__(self, info, payload, visit=None):
        self.info, self.steps, self._visit = info, info.size, visit
        self.first = payload
        self.scratch = [torch.empty_like(payload) for _ in range(min(2, info.size - 1))]

    def src(self, t: int) -> int:
        return (self.info.rank - t) % self.info.size

    def payload(self, t: int):
        return self.first if t == 0 else self.scratch[(t - 1) % 2]

    def fetch(self, t):
        if t == 0:
            return NOTHING
        return ([(self.info.next, self.payload(t - 1), self.TAG)], [(self.info.prev, self.payload(t), self.TAG)])

    def compute(self, t, handle):
        self._visit(self.src(t), self.payload(t))


def run_schedule(sched: Schedule, group) -> Schedule:
    """Run ``sched`` on ``group``; returns it (results live on the schedule object)."""
    s, r = sched.fetch(0)
    handle = exchange(s, r, group=group)
    for t in range(sched.steps):
        handle.wait()  # step t's inputs (and older returns) have arrived
        fs, fr = sched.fetch(t + 1) if t + 1 < sched.steps else NOTHING
        rs, rr = sched.returns(t - 1) if t > 0 else NOTHING
        handle = exchange(fs + rs, fr + rr, group=group)
        sched.compute(t, handle)
    handle.wait()
    rs, rr = sched.returns(sched.steps - 1)
    exchange(rs, rr, group=group).wait()
    sched.finish()
    return sched


class ScheduledAttention(torch.autograd.Function):
    """Attention whose forward and backward are schedules run by :func:`run_schedule`.

    ``fwd_cls(info, spans, q, k, v, mask=, scale=, backend=)`` leaves fp32 ``out``/``lse`` on the
    schedule; ``bwd_cls(info, spans, q, k, v, out, lse, dout, ...)`` exposes ``grads()`` ->
    ``(dq, dk, dv)``. Used by ring attention and TokenRing. Returns ``(out, lse)``: ``out`` in
    ``q.dtype``, ``lse`` ``[B, H, C]`` in the accumulator dtype (fp32; fp64 for fp64), not differentiable.
    """

    @staticmethod
    def forward(ctx, q, k, v, fwd_cls, bwd_cls, info, spans, mask, scale, backend):
        sched = run_schedule(fwd_cls(info, spans, q, k, v, mask=mask, scale=scale, backend=backend), info)
        out = sched.out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, sched.lse)
        ctx.opts = (bwd_cls, info, spans, mask, scale, backend)
        ctx.mark_non_differentiable(sched.lse)
        return out, sched.lse

    @staticmethod
    def backward(ctx, dout, _dlse=None):
        q, k, v, out, lse = ctx.saved_tensors
        bwd_cls, info, spans, mask, scale, backend = ctx.opts
        sched = run_schedule(bwd_cls(info, spans, q, k, v, out, lse, dout.contiguous(), mask=mask, scale=scale,
                                     backend=backend), info)
        dq, dk, dv = sched.grads()
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)) + (None,) * 7
