"""The ring driver: every ring of the package (ring attention forward/backward in any layout,
TokenRing forward/backward, RSA's passes, the TP GEMMs' ring) is a :class:`Schedule` run by
:func:`run_schedule`.

The schedule contract. Step ``t`` (``0 <= t < steps``) of a schedule consumes inputs that
``fetch(t)`` brought and produces results that ``returns(t)`` ships; both return
``(sends, recvs)`` lists of ``(group_rank, tensor, tag)`` (tags from :mod:`.tags`). The driver
posts, as one batched P2P exchange at the start of step ``t``, the fetch of step ``t+1``
(prefetch) together with the returns of step ``t-1``, then runs ``compute(t, handle)``: the block
compute overlaps both transfers, and ``compute`` waits on the handle only when it needs returned
data (e.g. an incoming accumulator). After the last step the returns of that step are exchanged
and waited, then ``finish()`` runs. ``fetch``/``returns`` are called exactly once per step, in
step order (``fetch(0)`` first), so a schedule may allocate its receive buffers inside them.
Every rank must list the transfers of one pair of ranks in the same order (see
:func:`~odysseus_kernels.comm.exchange`). On CUDA the exchange runs on comm's stream; schedules
double-buffer what they fetch so a receive never overwrites a buffer that the current step reads
(nor the caller's input). A step with nothing to send or receive posts nothing.
"""
from __future__ import annotations

from ...comm import CommHandle, exchange

Transfers = tuple[list, list]  # (sends, recvs) of (group_rank, tensor, tag)
NOTHING: Transfers = ((), ())
_DONE = CommHandle.done(())  # the handle of a step that posted nothing (waiting on it is free)


class Schedule:
    """Base class; subclasses set ``steps`` and override what they use (see the module docstring)."""

    steps: int

    def fetch(self, t: int) -> Transfers:
        """Transfers that bring the inputs of step ``t`` (posted at the start of step ``t-1``)."""
        return NOTHING

    def returns(self, t: int) -> Transfers:
        """Transfers that ship the results of step ``t`` (posted at the start of step ``t+1``)."""
        return NOTHING

    def compute(self, t: int, handle) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Runs after the returns of the last step have arrived."""


def _post(sends, recvs, group):
    return exchange(sends, recvs, group=group) if sends or recvs else _DONE


def run_schedule(sched: Schedule, group) -> Schedule:
    """Run ``sched`` on ``group``; returns it (results live on the schedule object)."""
    steps, fetch, returns, compute = sched.steps, sched.fetch, sched.returns, sched.compute
    handle = _post(*fetch(0), group)
    for t in range(steps):
        handle.wait()  # step t's inputs (and older returns) have arrived
        sends, recvs = fetch(t + 1) if t + 1 < steps else NOTHING
        if t > 0:
            rs, rr = returns(t - 1)
            if rs or rr:
                sends, recvs = (*sends, *rs), (*recvs, *rr)
        handle = _post(sends, recvs, group)
        compute(t, handle)
    handle.wait()
    _post(*returns(steps - 1), group).wait()
    sched.finish()
    return sched
