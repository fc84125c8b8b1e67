"""AllGather-GEMM and GEMM-ReduceScatter (the two GEMMs of Megatron sequence parallelism and of
Odysseus attention), differentiable, with the communication overlapped with the GEMM chunks.

``all_gather_matmul``: the sequence shards rotate around the ring (the same driver as ring
attention, :class:`~.attention.driver.Rotation`): each rank multiplies its own shard first and each
peer's shard as it arrives, while the next one is in flight; the rows land at their place of the
gathered output. ``matmul_reduce_scatter``: at step t a rank computes the partial product destined
for rank ``r-1-t`` and adds it to the accumulator arriving from the previous rank (fp32 locally,
shipped in the output dtype), which it passes on: after N-1 hops every rank holds its reduced rows.

Backward: each op's input gradient is the other op (dX of AG-GEMM = GEMM-RS of dY with Wᵀ; dX of
GEMM-RS = AG-GEMM of dY with Wᵀ), overlapped the same way. AG-GEMM keeps the gathered input for
``dW`` by default (``save_gathered=True``: memory instead of a second gather; ``False`` re-gathers in
backward). ``overlap=False`` (or inputs below :data:`MIN_OVERLAP_ELEMENTS`) uses the plain path:
one collective, then one GEMM (or the reverse).

Bytes received per rank (ledger kind ``p2p``; kind ``all_gather`` / ``reduce_scatter`` without
overlap): AG-GEMM forward ``(N-1)/N`` of the gathered input; GEMM-RS forward ``(N-1)/N`` of the full
output. Bias: AG-GEMM's bias is column-sharded like its weight (gradient complete on each rank);
GEMM-RS's bias is replicated and added once after the reduction, so, like a LayerNorm weight in
Megatron-SP, its gradient is this rank's rows' share: sum it over the group (as
``ParallelPlan.finish_backward`` does).
"""
from __future__ import annotations

import torch

from ..comm import all_gather, group_info, rank_consistent, reduce_scatter
from .attention.driver import NOTHING, Rotation, Schedule, run_schedule

# Below this many elements of local input, decomposing into N GEMMs cannot pay for its launches
# (a guess from the launch overhead of ~5 us per GEMM against ~1 GFLOP/s-class small GEMMs; not yet
# measured: benchmarks/tp_gemm.py measures the crossover on a GPU). CPU always takes the plain path
# unless overlap=True is forced.
MIN_OVERLAP_ELEMENTS = 1 << 20
_TAG_RS = 41


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_first(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` with ``dim`` first and the other leading dims flattened: ``[S, R, d]``."""
    x = x.movedim(dim, 0)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _restore(y: torch.Tensor, like_shape, dim: int) -> torch.Tensor:
    """Inverse of :func:`_rows_first` for an output of ``y.shape[0]`` rows and ``y.shape[-1]`` features."""
    moved = [like_shape[dim]] + [s for i, s in enumerate(like_shape) if i != dim]
    moved[0], moved[-1] = y.shape[0], y.shape[-1]
    return y.reshape(moved).movedim(0, dim)


def _use_overlap(overlap, x, info) -> bool:
    if info.size == 1:
        return False
    if overlap is not None:
        return bool(overlap)
    return x.is_cuda and x.numel() >= MIN_OVERLAP_ELEMENTS


def _ag_mm(xr: torch.Tensor, w: torch.Tensor, info, overlap: bool, keep_gathered: bool):
    """``[S, R, d_in]`` shard -> (``[N*S, R, d_out]`` product, gathered ``[N*S, R, d_in]`` or None)."""
    s = xr.shape[0]
    if not overlap:
        g = all_gather(xr.contiguous(), group=info)
        return g @ w.t(), (g if keep_gathered else None)
    out = xr.new_empty((info.size * s,) + tuple(xr.shape[1:-1]) + (w.shape[0],))
    gathered = xr.new_empty((info.size * s,) + tuple(xr.shape[1:])) if keep_gathered else None

    def visit(src, xs):
        torch.matmul(xs, w.t(), out=out[src * s:(src + 1) * s])
        if gathered is not None:
            gathered[src * s:(src + 1) * s].copy_(xs)

    run_schedule(Rotation(info, xr.contiguous(), visit), info)
    return out, gathered


class _RingReduceScatter(Schedule):
    """Partial products for rank ``r-1-t`` at step t, accumulated one hop behind."""

    def __init__(self, info, xr, w):
        self.info, self.steps = info, info.size
        self.xr, self.w = xr, w
        self.s = xr.shape[0] // info.size
        self.acc_dtype = _acc_dtype(xr.dtype)
        self.sending, self.incoming, self.result = {}, {}, None

    def dst(self, t):
        return (self.info.rank - 1 - t) % self.info.size

    def returns(self, t):
        if t >= self.steps - 1:
            return NOTHING
        buf = torch.empty_like(self.sending[t])
        self.incoming[t + 1] = buf
        return ([(self.info.next, self.sending.pop(t), _TAG_RS)], [(self.info.prev, buf, _TAG_RS)])

    def compute(self, t, handle):
        d = self.dst(t)
        part = (self.xr[d * self.s:(d + 1) * self.s] @ self.w.t()).to(self.acc_dtype)
        if t > 0:
            handle.wait()
            part += self.incoming.pop(t).to(self.acc_dtype)
        if t == self.steps - 1:
            self.result = part
        else:
            self.sending[t] = part.to(self.xr.dtype)


def _mm_rs(xr: torch.Tensor, w: torch.Tensor, info, overlap: bool) -> torch.Tensor:
    """``[L, R, d_in_local]`` -> this rank's ``[L/N, R, d_out]`` of the reduced product."""
    if not overlap:
        return reduce_scatter((xr @ w.t()).contiguous(), group=info)
    sched = run_schedule(_RingReduceScatter(info, xr.contiguous(), w), info)
    return sched.result.to(xr.dtype)


class _AllGatherMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, info, dim, overlap, save_gathered):
        xr = _rows_first(x, dim)
        y, gathered = _ag_mm(xr, w, info, overlap, save_gathered)
        if b is not None:
            y = y + b
        ctx.save_for_backward(w, gathered if save_gathered else xr)
        ctx.opts = (info, dim, overlap, save_gathered, tuple(x.shape), b is not None)
        return _restore(y, x.shape, dim)

    @staticmethod
    def backward(ctx, dy):
        w, saved = ctx.saved_tensors
        info, dim, overlap, save_gathered, xshape, has_b = ctx.opts
        dyr = _rows_first(dy, dim).contiguous()  # [N*S, R, d_out_local]
        dx = _mm_rs(dyr, w.t(), info, overlap)   # GEMM-RS of dY with W^T: [S, R, d_in]
        g = saved if save_gathered else all_gather(saved, group=info)
        dw = dyr.reshape(-1, dyr.shape[-1]).t() @ g.reshape(-1, g.shape[-1])
        db = dyr.reshape(-1, dyr.shape[-1]).sum(0) if has_b else None
        return _restore(dx, xshape, dim), dw, db, None, None, None, None


class _MatmulReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, info, dim, overlap):
        xr = _rows_first(x, dim)
        y = _mm_rs(xr, w, info, overlap)
        if b is not None:
            y = y + b
        ctx.save_for_backward(xr, w)
        ctx.opts = (info, dim, overlap, tuple(x.shape), b is not None)
        return _restore(y, x.shape, dim)

    @staticmethod
    def backward(ctx, dy):
        xr, w = ctx.saved_tensors
        info, dim, overlap, xshape, has_b = ctx.opts
        dyr = _rows_first(dy, dim).contiguous()        # [S, R, d_out]
        dx, g = _ag_mm(dyr, w.t(), info, overlap, True)  # AG-GEMM of dY with W^T: [L, R, d_in_local]
        dw = g.reshape(-1, g.shape[-1]).t() @ xr.reshape(-1, xr.shape[-1])
        db = dyr.reshape(-1, dyr.shape[-1]).sum(0) if has_b else None
        return _restore(dx, xshape, dim), dw, db, None, None, None


def _validate(op, check, x, weight, bias, dim, info, *, gather: bool):
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: x and weight must be torch.Tensors, got {type(x).__name__} and "
                        f"{type(weight).__name__}")
    check.meta(x=tuple(x.shape), weight=tuple(weight.shape), bias=None if bias is None else tuple(bias.shape),
               dtype=str(x.dtype), dim=dim)
    if x.dim() < 2:
        raise ValueError(f"{op}: x must be [..., seq, features], got shape {tuple(x.shape)}")
    d = dim % x.dim()
    if d == x.dim() - 1:
        raise ValueError(f"{op}: the sequence dim cannot be the feature (last) dim of x {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"{op}: weight must be [d_out, {x.shape[-1]}] (nn.Linear layout) for x {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"{op}: x, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}"
                        f"{'' if bias is None else ', ' + str(bias.dtype)}")
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        raise ValueError(f"{op}: x, weight and bias must be on one device")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not gather and x.shape[d] % info.size:
        raise ValueError(f"{op}: sequence length {x.shape[d]} (dim {d}) is not divisible by the group size "
                         f"{info.size}")
    return d


def all_gather_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, group=None,
                      gather_dim: int = 1, overlap: bool | None = None, save_gathered: bool = True) -> torch.Tensor:
    """``all_gather(x, gather_dim) @ weight.T + bias``, the gather overlapped with the GEMM.

    Args:
        x: this rank's sequence shard ``[..., seq_local, d_in]`` (any leading dims; the sequence
            along ``gather_dim``).
        weight: the local column shard ``[d_out_local, d_in]`` (nn.Linear layout); bias ``[d_out_local]``.
        overlap: ``None`` = automatic (ring-overlapped on CUDA above :data:`MIN_OVERLAP_ELEMENTS`),
            ``True`` / ``False`` to force.
        save_gathered: keep the gathered input for the weight gradient (default) or re-gather it.
    Returns:
        ``[..., seq_local * N, d_out_local]``, rows in rank order (the contiguous layout).
    Example::

        y = ok.all_gather_matmul(x_local, w_col_shard)   # [B, L, d_out/N]
    """
    info = group_info(group)
    with rank_consistent("all_gather_matmul", info) as check:
        d = _validate("all_gather_matmul", check, x, weight, bias, gather_dim, info, gather=True)
    return _AllGatherMatmul.apply(x, weight, bias, info, d, _use_overlap(overlap, x, info), save_gathered)


def matmul_reduce_scatter(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, group=None,
                          scatter_dim: int = 1, overlap: bool | None = None) -> torch.Tensor:
    """``reduce_scatter(x @ weight.T, scatter_dim) + bias``, the reduction overlapped with the GEMM.

    Args:
        x: the full sequence with this rank's input-feature shard ``[..., seq, d_in_local]``.
        weight: the local row shard ``[d_out, d_in_local]``; bias ``[d_out]`` (added once, after the
            reduction; its gradient is this rank's share — sum it over the group).
        overlap: as in :func:`all_gather_matmul`.
    Returns:
        ``[..., seq / N, d_out]``: this rank's rows (contiguous layout) of the reduced product.
    Example::

        out = ok.matmul_reduce_scatter(h_full, w_row_shard)   # [B, L/N, d_out]
    """
    info = group_info(group)
    with rank_consistent("matmul_reduce_scatter", info) as check:
        d = _validate("matmul_reduce_scatter", check, x, weight, bias, scatter_dim, info, gather=False)
    return _MatmulReduceScatter.apply(x, weight, bias, info, d, _use_overlap(overlap, x, info))


def tp_gemm_comm_bytes(world: int, rows_local: int, d_in: int, d_out: int, elem_bytes: int) -> dict:
    """Closed-form bytes received per rank in forward: AG-GEMM ``(N-1)/N`` of the gathered input
    (``rows_local`` rows per rank), GEMM-RS ``(N-1)/N`` of the full output."""
    return {"all_gather_matmul": (world - 1) * rows_local * d_in * elem_bytes,
            "matmul_reduce_scatter": (world - 1) * rows_local * d_out * elem_bytes}


__all__ = ["MIN_OVERLAP_ELEMENTS", "all_gather_matmul", "matmul_reduce_scatter", "tp_gemm_comm_bytes"]
