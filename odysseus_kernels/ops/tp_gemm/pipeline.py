"""The schedules behind the TP GEMMs: how a shard is gathered piece by piece while each piece is
multiplied, and how partial products are reduce-scattered while the next one is computed.

Shapes. A sharded activation is viewed as ``[P, R, d]``: ``P`` the product of the dims before the
sequence dim, ``R`` the rows of one rank's shard (its tokens times the product of the dims between
the sequence and the feature dim). The unsharded (gathered) activation is ``[P, N, R, d]``: that is
exactly the memory layout of the full tensor, so outputs need no final permute and inputs are never
copied to move the sequence dim first. A *piece* is ``[n, P, r, d]``: ``n`` ranks' shards
(``ranks`` a slice of the group), restricted to ``r`` of their rows (``rows`` a slice of ``R``).

Modes (:class:`Plan`), all issuing the same calls in the same order on every rank:

- ``"ring"``: N steps of one batched P2P exchange each (:class:`Ring`: a
  :class:`~odysseus_kernels.ops.ring.Rotation` and a :class:`~odysseus_kernels.ops.ring.Relay` on
  the package's ring driver).
  All-gather side: rank r multiplies its own shard first and the shard of rank ``r - t`` at step t,
  while the shard of step t+1 is already in flight (two scratch buffers, or straight into the
  saved gathered buffer). Reduce-scatter side: at step t rank r computes the partial product for
  rank ``r - t - 1``, adds the accumulator that rank ``r - 1`` shipped after its step t-1, and
  ships the sum on at the start of step t+1: after N-1 hops each rank holds its own rows. Partials
  are added in fp32 (fp64 for fp64) and shipped in the input dtype, so the bytes are those of a
  reduce-scatter of the output.
- ``"chunks"``: every shard's rows cut into ``c`` pieces; ``c`` all-gathers (reduce-scatters) on the
  communication stream, each overlapped with the GEMM of the previous (next) piece. Reductions run in
  the input dtype inside the collective.
- ``"plain"``: ``chunks`` with c = 1 (one collective, one GEMM); ``"local"``: one rank, no
  communication.
- ``"fused"``: one persistent Triton GEMM per op, fed (AG) or drained (RS) by the communication
  stream through device flags: see :mod:`.fused`.

Design choices against the known pitfalls:
- Launch order is rank-independent: the plan depends only on metadata that validation has checked
  to be equal on every rank (shapes, dtype, device type, flags); the ring posts one exchange per step
  with the same structure everywhere.
- No ``record_stream``: the comm handles keep send/receive buffers alive until ``wait()`` (which
  orders the compute stream after the transfer); buffers are then freed to the compute stream.
- At most one communication kernel runs beside the GEMMs: the ring keeps one batched P2P in flight
  (waited before the next is posted) and the chunked collectives queue on the single high-priority
  comm stream. ``NCCL_MAX_NCHANNELS`` further caps the SMs NCCL takes.
- The GEMMs are as large as the layout allows: a piece is one 2-D GEMM when it folds to 2-D, else one
  strided batched GEMM writing straight into its slice of the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._util import acc_dtype
from ...comm import GroupInfo, all_gather_async, reduce_scatter_async
from ..ring import Relay, Rotation, Schedule, run_schedule

# Auto mode decomposes (ring) only on CUDA and only when one step's GEMM does at least this many
# FLOPs (2*m*k*n of one shard's product): ~17 GFLOP, ~25 us of bf16 tensor-core work on an H100,
# several times the fixed cost a step adds (a GEMM launch, a P2P launch, two stream waits, ~5-10 us).
# A reasoned guess, NOT yet measured (no GPU was available when this was written):
# `python benchmarks/tp_gemm.py` measures where chunked GEMMs come within 5% of one GEMM and prints
# the per-step FLOPs it suggests; multi-GPU runs (see its docstring) measure the overlap itself.
MIN_OVERLAP_FLOPS = 2 ** 34

IMPLS = ("auto", "fused", "ring", "chunked", "plain")
DEFAULT_CHUNKS = 4


@dataclass(frozen=True)
class Plan:
    """How one op (and its backward, with the same plan) communicates."""

    info: GroupInfo
    mode: str  # "local" | "plain" | "ring" | "chunks" | "fused"
    chunks: int = 1  # row pieces per shard in "chunks" mode, reduce-scatter chunks in "fused" (clamped)


def make_plan(info: GroupInfo, impl: str, chunks: int | None, device_type: str, flops_per_step: int,
              fused_ok: bool = True) -> Plan:
    """Pick the mode for ``impl``: ``"fused"`` -> the persistent Triton GEMM fed/drained by flags (also
    on one rank, so the kernel path is the same); ``"ring"`` / ``"chunked"`` (``chunks`` pieces,
    default :data:`DEFAULT_CHUNKS`) / ``"plain"`` -> those schedules (one rank: local); ``"auto"`` -> one
    rank: local; CUDA: fused; else the ring when a step's GEMM reaches :data:`MIN_OVERLAP_FLOPS`
    (CUDA only), else plain; while a CUDA graph is being captured on several ranks, chunked (``"fused"``
    raises: its flags' epoch is counted on the host). ``fused_ok``: the dtype has a fused kernel."""
    capturing = (device_type == "cuda" and info.size > 1 and torch.cuda.is_available()
                 and torch.cuda.is_current_stream_capturing())
    if impl == "fused":
        if capturing:
            raise ValueError("impl='fused' cannot be captured in a CUDA graph on more than one rank: its arrival "
                             "flags carry an epoch counted on the host, which a replay would not advance; use "
                             "impl='chunked' or 'ring' inside a graph (impl='auto' does)")
        return Plan(info, "fused", chunks or DEFAULT_CHUNKS)
    if info.size == 1:
        return Plan(info, "local")
    if impl == "plain":
        return Plan(info, "plain")
    if impl == "chunked":
        return Plan(info, "chunks", chunks or DEFAULT_CHUNKS)
    if impl == "ring":
        return Plan(info, "ring")
    if device_type == "cuda" and fused_ok and not capturing:
        return Plan(info, "fused", chunks or DEFAULT_CHUNKS)
    if capturing:  # graph-safe: collectives on the comm stream, no host-counted flags
        return Plan(info, "chunks", chunks or DEFAULT_CHUNKS)
    return Plan(info, "ring" if device_type == "cuda" and flops_per_step >= MIN_OVERLAP_FLOPS else "plain")


def row_slices(rows: int, chunks: int) -> list[slice]:
    """``chunks`` contiguous, near-equal row ranges covering ``rows`` (fewer if rows < chunks)."""
    c = max(1, min(chunks, rows))
    base, extra = divmod(rows, c)
    out, start = [], 0
    for j in range(c):
        stop = start + base + (j < extra)
        out.append(slice(start, stop))
        start = stop
    return out


def gemm(a: torch.Tensor, bt: torch.Tensor, *, bias: torch.Tensor | None = None, out: torch.Tensor | None = None,
         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``a [..., m, k] @ bt [k, n] (+ bias [n])`` -> ``[..., m, n]``, written into ``out`` if given.

    One 2-D GEMM when ``a`` (and ``out``) fold to 2-D, else one strided batched GEMM with the weight
    broadcast (batch stride 0), so a slice of a larger output is written in place. ``out_dtype``
    (fp32 for fp16/bf16 inputs) has cuBLAS write the fp32 accumulator directly on CUDA; elsewhere
    the product is cast afterwards.
    """
    m, k = a.shape[-2:]
    n = bt.shape[1]
    cast = out_dtype is not None and out_dtype != a.dtype
    if cast and not a.is_cuda:
        assert out is None
        return gemm(a, bt, bias=bias).to(out_dtype)
    kw = {"out_dtype": out_dtype} if cast else {}
    a3 = a.reshape(-1, m, k)
    o3 = None
    if out is not None:
        try:
            o3 = out.view(-1, m, n)
        except RuntimeError:  # the slice does not flatten to [B, m, n]: through a temporary
            out.copy_(gemm(a, bt, bias=bias))
            return out
    b = a3.shape[0]
    if (b == 1 or a3.is_contiguous()) and (o3 is None or b == 1 or o3.is_contiguous()):
        a2 = a3[0] if b == 1 else a3.view(b * m, k)
        o2 = None if o3 is None else (o3[0] if b == 1 else o3.view(b * m, n))
        r = torch.addmm(bias, a2, bt, out=o2, **kw) if bias is not None else torch.mm(a2, bt, out=o2, **kw)
    else:
        b3 = bt.expand(b, k, n)
        r = (torch.baddbmm(bias, a3, b3, out=o3, **kw) if bias is not None else torch.bmm(a3, b3, out=o3, **kw))
    return out if out is not None else r.view(*a.shape[:-1], n)


class WeightGrad:
    """``sum_i a_i^T b_i`` over pieces (``a_i [..., o]``, ``b_i [..., i]``, same leading shape),
    accumulated in fp32 (fp64 for fp64 inputs); :meth:`result` casts to the parameter dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.acc = dtype, None

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a2 = a.reshape(-1, a.shape[-1]).t()
        b2 = b.reshape(-1, b.shape[-1])
        ad = acc_dtype(self.dtype)
        if self.acc is None:
            self.acc = gemm(a2, b2, out_dtype=ad)
        elif ad == a2.dtype:
            self.acc.addmm_(a2, b2)
        else:
            self.acc.add_(gemm(a2, b2, out_dtype=ad))

    def result(self) -> torch.Tensor:
        return self.acc.to(self.dtype)


class Ring(Schedule):
    """One ring pass (see the module docstring): an all-gather side (``gather`` ``[P, R, d]`` rotates,
    a :class:`~odysseus_kernels.ops.ring.Rotation`; ``visit(src, payload)`` at each step), a
    reduce-scatter side (``partial(dst)`` -> the partial for rank ``dst`` in the accumulation dtype,
    summed by a :class:`~odysseus_kernels.ops.ring.Relay` with ``lag=1``; :attr:`result` is this
    rank's sum), or both at once, plus ``side(ranks)``: extra compute (a weight gradient) that fills
    step t, with ``ranks`` the slice of the rank whose partial that step computes (every rank exactly
    once over the pass)."""

    def __init__(self, info: GroupInfo, *, gather=None, gathered=None, visit=None, partial=None, ship_dtype=None,
                 side=None):
        self.info, self.steps = info, info.size
        self.partial, self.side = partial, side
        self.rotation = None if gather is None else Rotation(info, gather, visit, gathered=gathered)
        self.relay = None if partial is None else Relay(info, info.size, lag=1, ship_dtype=ship_dtype)
        if self.rotation is not None:
            self.fetch = self.rotation.fetch
        if self.relay is not None:
            self.returns = self.relay.returns

    @property
    def result(self):
        return self.relay.result

    def dst(self, t: int) -> int:
        return (self.info.rank - t - 1) % self.info.size

    def compute(self, t, handle):
        # Every GEMM of the step is queued before the wait, so they overlap the transfers in flight.
        if self.rotation is not None:
            self.rotation.compute(t, handle)
        part = self.partial(self.relay.owner(t)) if self.relay is not None else None
        if self.side is not None:
            self.side(slice(self.dst(t), self.dst(t) + 1))
        if part is not None:
            self.relay.add(t, part, handle)


def gather_each(xv: torch.Tensor, plan: Plan, visit, *, keep: bool):
    """All-gather the shard ``xv [P, R, d]``, calling ``visit(ranks, rows, piece [n, P, r, d])`` on each
    piece as soon as it has arrived. Returns the gathered pieces ``[(rows, [N, P, r, d])]`` if ``keep``
    (in "local" mode a view of ``xv``, free), else ``None``."""
    info, n, rows_all = plan.info, plan.info.size, slice(0, xv.shape[1])
    if plan.mode == "local":
        visit(slice(0, 1), rows_all, xv[None])
        return [(rows_all, xv[None])] if keep else None
    if plan.mode == "ring":
        gathered = xv.new_empty((n,) + tuple(xv.shape)) if keep else None
        run_schedule(Ring(info, gather=xv, gathered=gathered,
                          visit=lambda src, p: visit(slice(src, src + 1), rows_all, p[None])), info)
        return [(rows_all, gathered)] if keep else None
    posted = []
    for rows in row_slices(xv.shape[1], plan.chunks if plan.mode == "chunks" else 1):
        inp = xv[:, rows].contiguous()  # a view unless P > 1 and the rows are a strict subset
        g = xv.new_empty((n,) + tuple(inp.shape))
        posted.append((rows, g, all_gather_async(g.view((n * inp.shape[0],) + tuple(inp.shape[1:])), inp,
                                                 group=info)))
    for rows, g, h in posted:  # collectives queue on the comm stream; piece j's GEMM overlaps j+1's
        h.wait()
        visit(slice(0, n), rows, g)
    return [(rows, g) for rows, g, _ in posted] if keep else None


def post_gather(xv: torch.Tensor, plan: Plan):
    """One all-gather of ``xv [P, R, d]`` posted now; returns ``(handle, gathered [N, P, R, d])``."""
    n = plan.info.size
    g = xv.new_empty((n,) + tuple(xv.shape))
    return all_gather_async(g.view((n * xv.shape[0],) + tuple(xv.shape[1:])), xv.contiguous(), group=plan.info), g


def reduce_each(partial, plan: Plan, shape, dtype: torch.dtype, *, side=None) -> torch.Tensor:
    """Reduce-scatter partial products: ``partial(ranks, rows, out_dtype)`` returns ``[n, P, r, o]``,
    the products destined for ``ranks`` restricted to ``rows``. Returns this rank's sum ``shape``
    ``= [P, R, o]`` (in the accumulation dtype on the ring, else ``dtype``). ``side(ranks)`` is compute
    overlapped with the communication: called once per ring step, else once with ``None`` (all)
    after the last collective is posted."""
    info, n = plan.info, plan.info.size
    rows_all = slice(0, shape[1])
    if plan.mode == "local":
        res = partial(slice(0, 1), rows_all, dtype)[0]
        if side is not None:
            side(None)
        return res
    if plan.mode == "ring":
        ad = acc_dtype(dtype)
        return run_schedule(Ring(info, partial=lambda d: partial(slice(d, d + 1), rows_all, ad)[0], ship_dtype=dtype,
                                 side=side), info).result
    out = None
    posted = []
    for rows in row_slices(shape[1], plan.chunks if plan.mode == "chunks" else 1):
        p = partial(slice(0, n), rows, dtype)  # [N, P, r, o], fresh and contiguous
        if out is None:
            out = p.new_empty(shape)
        tgt = out[:, rows]
        buf = tgt if tgt.is_contiguous() else out.new_empty(tgt.shape)  # NCCL wants it contiguous
        posted.append((tgt, buf, reduce_scatter_async(buf, p.view((n * p.shape[1],) + tuple(p.shape[2:])),
                                                      group=info)))
    if side is not None:
        side(None)
    for tgt, buf, h in posted:
        h.wait()
        if buf is not tgt:
            tgt.copy_(buf)
    return out
