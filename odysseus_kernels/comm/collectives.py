"""Asynchronous collectives that return a :class:`CommHandle`.

On CUDA the collective is issued from a dedicated high-priority communication stream that first
waits for the producer (the current stream), so the caller can launch compute on its own stream
and call ``handle.wait()`` only when it needs the result; ``wait()`` orders the caller's current
stream after the communication. The handle keeps the input/output tensors alive until ``wait()``
instead of ``record_stream`` (which delays frees on the caching allocator and grows memory): once
the consumer stream has waited, their memory may be reused safely.
On CPU (gloo) the same calls run with ``async_op=True`` and ``wait()`` blocks (for a reduce-scatter it
also runs the local reduction, see :func:`reduce_scatter_async`).
Every call records its bytes in the active ledgers (see :mod:`.ledger`).
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from .groups import GroupInfo, group_info
from .ledger import record
from .timeout import current_context, wait_bounded


@functools.lru_cache(maxsize=None)
def _comm_stream(device_index: int) -> torch.cuda.Stream:
    # priority: lower is higher; the highest available keeps NCCL kernels ahead of queued GEMMs.
    lo, hi = torch.cuda.Stream.priority_range()
    return torch.cuda.Stream(device=device_index, priority=hi)


def comm_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The communication stream of a CUDA device (``None`` for CPU tensors)."""
    if device.type != "cuda":
        return None
    return _comm_stream(device.index if device.index is not None else torch.cuda.current_device())


class CommHandle:
    """A posted communication. ``wait()`` returns ``result`` once it is safe to use.

    On a CPU (gloo) group ``wait()`` blocks the host for at most the bound of
    :func:`~odysseus_kernels.comm.timeout.comm_timeout` and raises a ``TimeoutError`` naming the op,
    step and peer past it; on NCCL it only orders the current stream (see :mod:`.timeout`)."""

    __slots__ = ("_works", "_keep", "result", "_done", "_bound", "_then")

    def __init__(self, works, keep=(), result=None, bound=None, then=None):
        works = list(works)
        peers = bound.get("peers") if bound else None
        if peers is not None and len(peers) == len(works):  # keep the work -> peer pairing
            kept = [(w, p) for w, p in zip(works, peers) if w is not None]
            works = [w for w, _ in kept]
            bound = dict(bound, peers=[p for _, p in kept])
        else:
            works = [w for w in works if w is not None]
        self._works = works
        self._keep = keep
        self.result = result
        self._done = False
        self._bound = bound
        self._then = then  # run once after the works completed (e.g. a local reduction)

    def wait(self):
        if not self._done:
            if self._bound is not None:
                wait_bounded(self._works, **self._bound)
            else:
                for w in self._works:
                    w.wait()  # on CUDA: makes the *current* stream wait for the NCCL stream
            if self._then is not None:
                self._then()
                self._then = None
            self._works = []
            self._keep = ()
            self._done = True
        return self.result

    @staticmethod
    def done(result=None) -> "CommHandle":
        h = CommHandle((), result=result)
        h._done = True
        return h


def bound_for(info: GroupInfo, device: torch.device, what: str, *, peers=None, step=None) -> dict | None:
    """The arguments of the bounded wait of a call posted now (``None`` when its wait is
    stream-ordered: CUDA tensors on an NCCL group). Also counts the call for the step numbering."""
    op, step = current_context(step)
    if device.type != "cpu" and "nccl" in info.backend:
        return None
    return {"what": what, "op": op, "step": step, "info": info, "peers": peers}


def launch(device: torch.device, issue):
    """Run ``issue()`` (which posts async collectives and returns their works) on the comm stream."""
    cs = comm_stream(device)
    if cs is None:
        return issue()
    cs.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(cs):
        return issue()


# torch >= 2.14 renamed the tensor collectives (the old names warn); older releases have only those.
_all_gather_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


# reduce-scatter on gloo/CPU: rank-major pieces [N, ...] -> this rank's reduction (see reduce_scatter_async)
_LOCAL_REDUCE = {
    dist.ReduceOp.SUM: lambda x, n: x.sum(0),
    dist.ReduceOp.AVG: lambda x, n: x.sum(0) / n,
    dist.ReduceOp.MAX: lambda x, n: x.amax(0),
    dist.ReduceOp.MIN: lambda x, n: x.amin(0),
    dist.ReduceOp.PRODUCT: lambda x, n: x.prod(0),
}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def all_gather_async(out: torch.Tensor, inp: torch.Tensor, *, group=None, step=None) -> CommHandle:
    """``out`` (``[N * inp.shape[0], ...]``, rank-major) gathers every rank's ``inp``."""
    info = group_info(group)
    if info.size == 1:
        out.copy_(inp)
        return CommHandle.done(out)
    s = _nbytes(inp)
    record("all_gather", (info.size - 1) * s, (info.size - 1) * s)
    work = launch(inp.device, lambda: _all_gather_tensor(out, inp, group=info.group, async_op=True))
    return CommHandle([work], (inp, out), out, bound_for(info, inp.device, "all_gather", step=step))


def reduce_scatter_async(out: torch.Tensor, inp: torch.Tensor, *, group=None,
                         op=dist.ReduceOp.SUM, step=None) -> CommHandle:
    """``out`` (``[inp.shape[0] / N, ...]``, ``inp``'s dtype) receives this rank's slice of the sum
    (or ``op``) of ``inp`` over the ranks.

    CPU tensors: an all-to-all and a local reduction (``SUM``, ``AVG`` for floating dtypes, ``MAX``,
    ``MIN``, ``PRODUCT``), written into ``out`` by ``wait()``; the same bytes per rank as a ring
    reduce-scatter, plus a receive buffer of ``inp``'s size until ``wait()``. gloo's own reduce-scatter
    cannot be bounded: its wait ignores the timeout, and one that never completes (a peer failed)
    blocks every later reduce-scatter of the process, on any group."""
    info = group_info(group)
    n = info.size
    local = inp.device.type == "cpu"
    reduce = _LOCAL_REDUCE.get(op)
    if out.dtype != inp.dtype or out.numel() * n != inp.numel():
        raise ValueError(f"reduce_scatter: out must have inp's dtype and 1/{n} of its elements, got out "
                         f"{tuple(out.shape)} {out.dtype} for inp {tuple(inp.shape)} {inp.dtype}")
    if local and (reduce is None or (op == dist.ReduceOp.AVG and not inp.is_floating_point())):
        raise ValueError(f"reduce_scatter of CPU tensors supports SUM, MAX, MIN, PRODUCT and AVG (floating "
                         f"dtypes), got {op} for {inp.dtype}")
    if n == 1:
        out.copy_(inp)
        return CommHandle.done(out)
    s = _nbytes(inp) * (n - 1) // n
    record("reduce_scatter", s, s)
    bound = bound_for(info, inp.device, "reduce_scatter", step=step)
    if local:
        inp = inp.contiguous()
        pieces = torch.empty(inp.shape, dtype=inp.dtype)
        work = dist.all_to_all_single(pieces, inp, group=info.group, async_op=True)

        def finish():
            out.copy_(reduce(pieces.view((n,) + tuple(out.shape)), n))

        return CommHandle([work], (inp, out, pieces), out, bound, then=finish)
    work = launch(inp.device, lambda: _reduce_scatter_tensor(out, inp, op=op, group=info.group, async_op=True))
    if bound is not None:
        # CUDA tensors on gloo (a test set-up): the work ignores wait(timeout=), so it is polled; this
        # bounds the wait, but a stuck one still blocks the process's later reduce-scatters
        bound["poll"] = True
    return CommHandle([work], (inp, out), out, bound)


def all_to_all_async(out: torch.Tensor, inp: torch.Tensor, *, group=None, step=None) -> CommHandle:
    """Equal-split all-to-all along dim 0: chunk j of ``inp`` goes to rank j; chunk j of ``out``
    comes from rank j."""
    info = group_info(group)
    if info.size == 1:
        out.copy_(inp)
        return CommHandle.done(out)
    s = _nbytes(inp) * (info.size - 1) // info.size
    r = _nbytes(out) * (info.size - 1) // info.size
    record("all_to_all", s, r)
    work = launch(inp.device, lambda: dist.all_to_all_single(out, inp, group=info.group, async_op=True))
    return CommHandle([work], (inp, out), out, bound_for(info, inp.device, "all_to_all", step=step))


def all_reduce_async(t: torch.Tensor, *, group=None, op=dist.ReduceOp.SUM, step=None) -> CommHandle:
    """In-place all-reduce of ``t``."""
    info = group_info(group)
    if info.size == 1:
        return CommHandle.done(t)
    s = 2 * _nbytes(t) * (info.size - 1) // info.size
    record("all_reduce", s, s)
    work = launch(t.device, lambda: dist.all_reduce(t, op=op, group=info.group, async_op=True))
    return CommHandle([work], (t,), t, bound_for(info, t.device, "all_reduce", step=step))


def all_gather(inp: torch.Tensor, *, group=None) -> torch.Tensor:
    """Blocking convenience: every rank's ``inp`` concatenated along dim 0 in rank order."""
    info = group_info(group)
    inp = inp.contiguous()
    out = inp.new_empty((info.size * inp.shape[0],) + tuple(inp.shape[1:]))
    return all_gather_async(out, inp, group=info).wait()


def reduce_scatter(inp: torch.Tensor, *, group=None) -> torch.Tensor:
    """Blocking convenience: sum over ranks of ``inp`` (``[N*m, ...]``), this rank's ``[m, ...]``."""
    info = group_info(group)
    inp = inp.contiguous()
    out = inp.new_empty((inp.shape[0] // info.size,) + tuple(inp.shape[1:]))
    return reduce_scatter_async(out, inp, group=info).wait()


def all_to_all(inp: torch.Tensor, *, group=None) -> torch.Tensor:
    """Blocking convenience for :func:`all_to_all_async`."""
    inp = inp.contiguous()
    return all_to_all_async(torch.empty_like(inp), inp, group=group).wait()


def all_reduce(t: torch.Tensor, *, group=None) -> torch.Tensor:
    """Blocking in-place all-reduce (sum)."""
    return all_reduce_async(t, group=group).wait()


def all_gather_objects(obj, *, group=None) -> list:
    """Every rank's picklable ``obj`` (for reports and control, not for tensors on the hot path)."""
    from .validate import all_gather_bytes  # the CPU control group, bounded waits

    info = group_info(group)
    if info.size == 1:
        return [obj]
    return all_gather_bytes(obj, info, "all_gather_objects")


__all__ = [
    "all_gather_objects",
    "bound_for",
    "CommHandle", "GroupInfo", "comm_stream", "launch", "all_gather_async", "reduce_scatter_async",
    "all_to_all_async", "all_reduce_async", "all_gather", "reduce_scatter", "all_to_all", "all_reduce",
]
