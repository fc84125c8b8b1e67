"""AllGather-GEMM and GEMM-ReduceScatter: the two GEMMs of Megatron sequence parallelism (TP-SP)
and of Odysseus attention, differentiable, with the communication overlapped with the GEMMs.

Both compute ``F.linear`` (``x @ W.T + b``, nn.Linear's weight layout), hence the names.

``all_gather_linear(x, W)`` = ``all_gather(x, gather_dim) @ W.T``: each rank multiplies its own
sequence shard first and every peer's shard as it arrives (ring P2P, double-buffered), each product
landing in its rows of the output. ``linear_reduce_scatter(x, W)`` = ``reduce_scatter(x @ W.T,
scatter_dim)``: each rank computes the partial product destined for each rank in turn and ships it
while computing the next (ring reduce-scatter, fp32 accumulation, shipped in the input dtype). The
schedules live in :mod:`.pipeline`; ``impl=`` picks the schedule: ``"fused"`` (one
persistent Triton GEMM fed / drained through device flags, :mod:`.fused`), ``"ring"``, ``"chunked"``
(``chunks=c`` pipelined collectives), ``"plain"`` (one collective, one GEMM) or ``"auto"``.

Backward (each op's input gradient is the other op, run with the same plan):

- AG-GEMM: ``dX = GEMM-RS(dY, W)``; ``dW = dY^T @ gathered x``. By default (``save_gathered=True``)
  forward keeps the gathered x for dW (``N x`` the shard in memory, no extra communication).
  ``save_gathered=False`` keeps only the local shard and backward re-gathers x *inside the same
  ring* that reduce-scatters dX (one exchange per step carries both; the dW GEMMs fill the steps):
  ``(N-1)/N`` of the gathered x again, hidden behind the GEMMs, for the memory Megatron-LM saves.
- GEMM-RS: ``dX = AG-GEMM(dY, W^T)``; ``dW = AG(dY)^T @ x``, accumulated piece by piece as the
  shards of dY arrive (nothing gathered is kept).
- ``impl="fused"``: the same decomposition with the fused ops (dX of AG-GEMM is the fused GEMM-RS
  with ``W^T`` as its weight, dX of GEMM-RS the fused AG-GEMM, whose gathered dY also gives dW);
  ``save_gathered=False`` re-gathers x with one all-gather posted before the fused GEMM-RS.
- Bias: added once. AG-GEMM's bias is column-sharded like its weight (its gradient is complete on
  each rank). GEMM-RS's bias is replicated and added after the reduction; as for a LayerNorm weight
  in Megatron-SP its gradient on each rank is that rank's rows' share: sum it over the group
  (``ParallelPlan.finish_backward`` does).

Bytes received per rank (:func:`tp_gemm_comm_bytes`; ledger kind ``p2p`` on the ring and on the
fused AG side, else ``all_gather`` / ``reduce_scatter``): AG-GEMM forward ``(N-1)/N`` of the gathered input; GEMM-RS
forward ``(N-1)/N`` of the full output, in the output dtype (fp32 only in the local accumulator).
Backward: the conjugate volumes (plus ``(N-1)/N`` of the gathered x for AG-GEMM when it re-gathers).
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ..._util import acc_dtype
from ...comm import group_info, rank_consistent
from ..ring import run_schedule
from . import fused
from .fused import FUSED_DTYPES, fused_supported
from .pipeline import (
    IMPLS,
    MIN_OVERLAP_FLOPS,
    Plan,
    Ring,
    WeightGrad,
    gather_each,
    gemm,
    make_plan,
    post_gather,
    reduce_each,
)


def _split(shape, dim: int) -> tuple[int, int, int]:
    """``(P, S, Q)``: product of dims before ``dim``, ``shape[dim]``, product of dims between it and
    the feature dim."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:-1])


class _AllGatherLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: Plan, dim: int, save_gathered: bool):
        p, s, q = _split(x.shape, dim)
        n, r = plan.info.size, s * q
        xv = x.contiguous().view(p, r, x.shape[-1])  # the ring sends it: contiguous
        wt = weight.t()
        y4 = xv.new_empty((p, n, r, weight.shape[0]))  # the memory layout of [..., N*S, ..., d_out]

        def visit(ranks, rows, piece):  # piece [k, P, r, d_in] -> its rows of y
            gemm(piece, wt, bias=bias, out=y4[:, ranks, rows].transpose(0, 1))

        need_x, need_w = ctx.needs_input_grad[:2]
        if plan.mode == "fused":  # one persistent GEMM fed by the ring through flags
            g = fused.all_gather_gemm(xv, weight, bias, plan.info, y4)
            pieces = [(slice(0, r), g)] if need_w and save_gathered else None
        else:
            pieces = gather_each(xv, plan, visit, keep=need_w and (save_gathered or plan.mode == "local"))
        # backward needs: W for dX; for dW the gathered pieces, or the shard to gather again
        ctx.save_for_backward(xv if need_w and not pieces else None, weight if need_x else None,
                              *(g for _, g in pieces or ()))
        ctx.rows = [rows for rows, _ in pieces or ()]
        ctx.opts = (plan, tuple(x.shape), x.dtype, p, r, weight.shape[0], bias is not None)
        out_shape = list(x.shape)
        out_shape[dim], out_shape[-1] = n * s, weight.shape[0]
        return y4.view(out_shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        xv, w, *saved = ctx.saved_tensors
        plan, xshape, dtype, p, r, d_out, has_b = ctx.opts
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n, d_in = plan.info.size, xshape[-1]
        dy4 = dy.reshape(p, n, r, d_out)
        wg = WeightGrad(dtype) if need_w else None
        pieces = list(zip(ctx.rows, saved))

        def dw_saved(ranks):  # dW from the saved gathered pieces (all ranks if ranks is None)
            for rows, g in pieces:
                rk = slice(0, n) if ranks is None else ranks
                wg.add(dy4[:, rk, rows].transpose(0, 1), g[rk])

        def dw_arrived(src, xs):  # dW from the shard of rank src, re-gathered on the ring
            wg.add(dy4[:, src], xs)

        def partial(ranks, rows, dt):  # dX partials: dY @ W for the rows owned by `ranks`
            return gemm(dy4[:, ranks, rows].transpose(0, 1), w, out_dtype=dt)

        dx = None
        if need_x and plan.mode == "fused":  # dX = fused GEMM-RS(dY, W): the kernel's w is W^T [d_in, d_out]
            h, g = (None, None) if (not need_w or pieces) else post_gather(xv, plan)
            dx = fused.gemm_reduce_scatter(dy4, w.t(), plan.info, dtype, chunks=plan.chunks)
            if need_w:
                if pieces:
                    dw_saved(None)
                else:
                    h.wait()
                    wg.add(dy4.transpose(0, 1), g)
            dx = dx.view(xshape)
        elif need_x:
            if not need_w or pieces:
                dx = reduce_each(partial, plan, (p, r, d_in), dtype, side=dw_saved if need_w else None)
            elif plan.mode == "ring":  # one ring: x rotates (dW) while dX's partials accumulate
                dx = run_schedule(Ring(plan.info, gather=xv, visit=dw_arrived, ship_dtype=dtype,
                                       partial=lambda d: partial(slice(d, d + 1), slice(0, r), acc_dtype(dtype))[0]),
                                  plan.info).result
            else:  # the re-gather is posted first and overlaps the dX GEMMs; dW overlaps the reduce
                h, g = post_gather(xv, plan)
                dx = reduce_each(partial, plan, (p, r, d_in), dtype,
                                 side=lambda _: (h.wait(), wg.add(dy4.transpose(0, 1), g)))
            dx = dx.to(dtype).view(xshape)
        elif need_w:
            if pieces:
                dw_saved(None)
            else:
                gather_each(xv, plan, lambda ranks, rows, g: wg.add(dy4[:, ranks, rows].transpose(0, 1), g),
                            keep=False)
        db = dy4.sum((0, 1, 2)) if has_b and need_b else None
        return dx, (wg.result() if need_w else None), db, None, None, None


class _LinearReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: Plan, dim: int):
        p, s, q = _split(x.shape, dim)
        n = plan.info.size
        r = (s // n) * q
        x4 = x.reshape(p, n, r, x.shape[-1])
        wt = weight.t()

        def partial(ranks, rows, dt):
            return gemm(x4[:, ranks, rows].transpose(0, 1), wt, out_dtype=dt)

        if plan.mode == "fused":  # one persistent GEMM; chunks reduce-scattered as the GEMM flags them
            res = fused.gemm_reduce_scatter(x4, weight, plan.info, x.dtype, chunks=plan.chunks)
        else:
            res = reduce_each(partial, plan, (p, r, weight.shape[0]), x.dtype)
        if bias is not None:
            res = res.add_(bias)  # once, after the reduction (in fp32 on the ring)
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x4 if need_w else None, weight if need_x else None)
        ctx.opts = (plan, tuple(x.shape), x.dtype, p, r, weight.shape[0], bias is not None)
        out_shape = list(x.shape)
        out_shape[dim], out_shape[-1] = s // n, weight.shape[0]
        return res.to(x.dtype).view(out_shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x4, w = ctx.saved_tensors
        plan, xshape, dtype, p, r, d_out, has_b = ctx.opts
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dyv = dy.reshape(p, r, d_out).contiguous()  # the ring sends it
        dx4 = dyv.new_empty((p, plan.info.size, r, xshape[-1])) if need_x else None
        wg = WeightGrad(dtype) if need_w else None

        def visit(ranks, rows, g):  # g [k, P, r, d_out]: dY of rank(s) `ranks`, as it arrives
            if need_x:
                gemm(g, w, out=dx4[:, ranks, rows].transpose(0, 1))
            if need_w:
                wg.add(g, x4[:, ranks, rows].transpose(0, 1))

        if plan.mode == "fused" and need_x:  # dX = fused AG-GEMM(dY, W^T); dW from the gathered dY
            g = fused.all_gather_gemm(dyv, w.t(), None, plan.info, dx4)
            if need_w:
                wg.add(g.transpose(0, 1), x4)
        elif need_x or need_w:
            gather_each(dyv, plan, visit, keep=False)
        db = dyv.sum((0, 1)) if has_b and need_b else None  # this rank's share (see module docstring)
        return (dx4.view(xshape) if need_x else None), (wg.result() if need_w else None), db, None, None


def _empty(x, weight, bias, dim: int, out_len: int) -> torch.Tensor:
    """No rows, no input features or no output features (the same on every rank: validated): the
    result needs no communication. It is ``bias`` (or 0) on ``out_len`` rows along ``dim``; gradients:
    dX and dW are zero (or empty), db is this rank's rows' sum of dY, as on the communicating path."""
    shape = list(x.shape)
    shape[dim] = out_len
    zeros = x.new_zeros(shape) + 0 * x.sum()  # dX = 0 (the shape of x), through autograd
    return torch.nn.functional.linear(zeros, weight, bias).contiguous()


def _validate(op: str, check, x, weight, bias, dim, info, impl, chunks, *, scatter: bool) -> int:
    """Local checks (raise inside ``rank_consistent``); returns the normalised sequence dim."""
    for name, t in (("x", x), ("weight", weight)) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    check.meta(x=tuple(x.shape), weight=tuple(weight.shape), bias=None if bias is None else tuple(bias.shape),
               dtype=str(x.dtype), device=x.device.type, dim=dim, impl=impl, chunks=chunks, grad=grad,
               needs=tuple(t is not None and t.requires_grad for t in (x, weight, bias)))
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise ValueError(f"{op}: chunks must be None or an int >= 1, got {chunks!r}")
    if chunks is not None and impl not in ("chunked", "fused"):
        raise ValueError(f"{op}: chunks applies to impl='chunked' (pieces per shard) or 'fused' (reduce-scatter "
                         f"chunks), got impl={impl!r}")
    if x.dim() < 2:
        raise ValueError(f"{op}: x must be [..., seq, ..., features] (at least 2-D), got shape {tuple(x.shape)}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{op}: {'scatter' if scatter else 'gather'}_dim must be in [-{x.dim()}, {x.dim() - 2}] "
                         f"for x of shape {tuple(x.shape)}, got {dim}")
    d = dim % x.dim()
    if d == x.dim() - 1:
        raise ValueError(f"{op}: the sequence dim cannot be the feature (last) dim of x {tuple(x.shape)}, got "
                         f"{'scatter' if scatter else 'gather'}_dim={dim}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"{op}: x, weight and bias must share a dtype, got x {x.dtype}, weight {weight.dtype}"
                        f"{'' if bias is None else ', bias ' + str(bias.dtype)}")
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        raise ValueError(f"{op}: x, weight and bias must be on one device, got x on {x.device}, weight on "
                         f"{weight.device}{'' if bias is None else ', bias on ' + str(bias.device)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"{op}: weight must be [d_out, {x.shape[-1]}] (nn.Linear layout, d_in = x.shape[-1]) for x "
                         f"of shape {tuple(x.shape)}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must be [{weight.shape[0]}] (weight.shape[0]), got {tuple(bias.shape)}")
    if impl == "fused":
        why = fused_supported(x.device)
        if why is not None:
            raise ValueError(f"{op}: {why}")
        if x.dtype not in FUSED_DTYPES:
            raise TypeError(f"{op}: impl='fused' supports float16, bfloat16 and float32, got {x.dtype}")
    if scatter and x.shape[d] % info.size:
        raise ValueError(f"{op}: sequence length {x.shape[d]} (x.shape[{d}]) must be divisible by the group size "
                         f"{info.size}")
    return d


def all_gather_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, group=None,
                      gather_dim: int = 1, impl: str = "auto", chunks: int | None = None,
                      save_gathered: bool = True) -> torch.Tensor:
    """``all_gather(x, gather_dim) @ weight.T + bias``, the gather overlapped with the GEMM.

    Args:
        x: this rank's sequence shard ``[..., S_local, ..., d_in]`` (any leading dims; the sequence
            along ``gather_dim``; every rank the same shape).
        weight: the local column shard ``[d_out_local, d_in]`` (nn.Linear layout).
        bias: ``[d_out_local]`` or ``None`` (column-sharded like the weight).
        group: process group (``None``: the default group).
        gather_dim: the sequence dim of ``x`` (not the last).
        impl: ``"fused"``: one persistent Triton GEMM whose tiles wait on per-piece flags written by
            the communication stream as the ring delivers each shard (see :mod:`.fused`; on CPU the
            kernel runs in the Triton interpreter); ``"ring"``: a GEMM per ring step; ``"chunked"``:
            ``chunks`` pipelined all-gathers of row pieces with a GEMM each; ``"plain"``: one
            all-gather then one GEMM; ``"auto"`` (default): ``"fused"`` on CUDA (fp16/bf16/fp32),
            else the ring on CUDA when one step's GEMM reaches :data:`MIN_OVERLAP_FLOPS`, else plain.
        chunks: row pieces per shard for ``"chunked"`` (default 4), reduce-scatter chunks of the
            fused backward (GEMM-RS) for ``"fused"``; not allowed with the other impls.
        save_gathered: keep the gathered input for the weight gradient (default; memory: ``N x`` the
            shard) or re-gather it inside backward's ring (``False``; communication, overlapped).
    Returns:
        ``[..., S_local * N, ..., d_out_local]`` (contiguous), rows in rank order.
    Example::

        x = torch.randn(2, 1024, 4096, device="cuda", dtype=torch.bfloat16)     # [B, L/N, d]
        w = torch.randn(3 * 4096 // n, 4096, device="cuda", dtype=torch.bfloat16)
        qkv = ok.all_gather_linear(x, w)                                         # [B, L, 3d/N]
    """
    info = group_info(group)
    with rank_consistent("all_gather_linear", info) as check:
        d = _validate("all_gather_linear", check, x, weight, bias, gather_dim, info, impl, chunks, scatter=False)
        check.meta(save_gathered=bool(save_gathered))
    if x.numel() == 0 or weight.numel() == 0:
        return _empty(x, weight, bias, d, info.size * x.shape[d])
    p, s, q = _split(x.shape, d)
    plan = make_plan(info, impl, chunks, x.device.type, 2 * p * s * q * x.shape[-1] * weight.shape[0],
                     fused_ok=x.dtype in FUSED_DTYPES)
    return _AllGatherLinear.apply(x, weight, bias, plan, d, bool(save_gathered))


def linear_reduce_scatter(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, group=None,
                          scatter_dim: int = 1, impl: str = "auto", chunks: int | None = None) -> torch.Tensor:
    """``reduce_scatter(x @ weight.T, scatter_dim) + bias``, the reduction overlapped with the GEMM.

    Args:
        x: the full sequence with this rank's input-feature shard ``[..., S, ..., d_in_local]``
            (``S`` divisible by the group size; every rank the same shape).
        weight: the local row shard ``[d_out, d_in_local]`` (nn.Linear layout).
        bias: ``[d_out]`` or ``None``: replicated, added once after the reduction; its gradient is
            this rank's rows' share (sum it over the group).
        group, impl, chunks: as in :func:`all_gather_linear` (``chunks``: pipelined reduce-scatters
            of row pieces for ``"chunked"``, chunks the fused GEMM flags one by one for ``"fused"``;
            both reduce in the input dtype, the ring in fp32).
        scatter_dim: the sequence dim of ``x`` (not the last).
    Returns:
        ``[..., S / N, ..., d_out]`` (contiguous): this rank's rows (contiguous layout) of the sum over
        ranks of ``x @ weight.T``, plus ``bias``.
    Example::

        h = torch.randn(2, 8192, 11008 // n, device="cuda", dtype=torch.bfloat16)  # [B, L, i/N]
        w = torch.randn(4096, 11008 // n, device="cuda", dtype=torch.bfloat16)
        out = ok.linear_reduce_scatter(h, w)                                       # [B, L/N, d]
    """
    info = group_info(group)
    with rank_consistent("linear_reduce_scatter", info) as check:
        d = _validate("linear_reduce_scatter", check, x, weight, bias, scatter_dim, info, impl, chunks,
                      scatter=True)
    if x.numel() == 0 or weight.numel() == 0:
        return _empty(x, weight, bias, d, x.shape[d] // info.size)
    p, s, q = _split(x.shape, d)
    plan = make_plan(info, impl, chunks, x.device.type, 2 * p * (s // info.size) * q * x.shape[-1] * weight.shape[0],
                     fused_ok=x.dtype in FUSED_DTYPES)
    return _LinearReduceScatter.apply(x, weight, bias, plan, d)


def tp_gemm_comm_bytes(world: int, rows_local: int, d_in: int, d_out: int, elem_bytes: int, *,
                       save_gathered: bool = True) -> dict:
    """Closed-form bytes received per rank, for ``rows_local`` rows per rank's shard (all dims but
    the feature dim), ``d_in``/``d_out`` the op's local weight shape ``[d_out, d_in]``.

    Returns ``{"all_gather_linear": fwd, "all_gather_linear_backward": bwd, "linear_reduce_scatter":
    fwd, "linear_reduce_scatter_backward": bwd}`` (all with x, weight and bias needing gradients)."""
    hop = (world - 1) * rows_local * elem_bytes
    return {"all_gather_linear": hop * d_in,
            "all_gather_linear_backward": hop * d_in * (1 if save_gathered else 2),
            "linear_reduce_scatter": hop * d_out,
            "linear_reduce_scatter_backward": hop * d_out}


__all__ = ["IMPLS", "MIN_OVERLAP_FLOPS", "all_gather_linear", "linear_reduce_scatter", "tp_gemm_comm_bytes"]
