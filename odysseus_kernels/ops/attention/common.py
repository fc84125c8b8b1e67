"""Validation and small helpers shared by the sequence-parallel attention ops."""
from __future__ import annotations

import functools
import math

import torch

from ..._util import acc_dtype
from ...comm import rank_consistent
from ...kernels.attention import attention_block_bwd, attention_block_fwd
from ...kernels.attention.api import resolve_backend
from ..._host import host_values
from ..layout import LAYOUTS, layout_spans, normalize_cu_seqlens
from .blocks import Mask

try:  # the package-wide default layout (the same for shard_sequence / gather_sequence and every op)
    from ..layout import DEFAULT_LAYOUT
except ImportError:  # pragma: no cover - older layout module
    DEFAULT_LAYOUT = "contiguous"


def validate_window(op: str, window) -> tuple[int, int]:
    """``window_size=(left, right)`` in tokens, -1 = unbounded."""
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window)):
        raise ValueError(f"{op}: window_size must be (left, right) with ints >= -1 (-1 = unbounded), got {window!r}")
    return int(window[0]), int(window[1])


def is_empty(q, k) -> bool:
    """Batch 0 or zero-length shards (the same on every rank: shapes are checked across ranks)."""
    return q.numel() == 0 or k.numel() == 0


def empty_attention(q, k, v, return_lse: bool):
    """The result of an attention op on empty inputs, without communicating: ``out`` (empty, connected to
    ``q``, ``k``, ``v`` so that backward gives their (empty) zero gradients) and ``lse`` (-inf)."""
    b, c, h, _ = q.shape
    out = torch.zeros(b, c, h, v.shape[-1], dtype=q.dtype, device=q.device) + (q.sum() + k.sum() + v.sum()) * 0
    if not return_lse:
        return out
    return out, torch.full((b, h, c), float("-inf"), dtype=acc_dtype(q.dtype), device=q.device)


def validate_qkv(op: str, check, q, k, v, *, layout: str | None, causal: bool, softmax_scale, extra=None,
                 cu_seqlens=None, same_kv_shape: bool = False) -> None:
    """Local checks of attention inputs (raise inside a ``rank_consistent`` block) and the metadata
    that must agree across ranks. ``same_kv_shape``: k and v travel stacked (ring, RSA, all-gather-KV),
    so their head dims must match too."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    cu = cu_seqlens
    if isinstance(cu_seqlens, torch.Tensor):  # read once per tensor version (a 1-D tensor; others fail below)
        cu = host_values(cu_seqlens) if cu_seqlens.dim() == 1 else cu_seqlens.tolist()
    check.meta(q=tuple(q.shape), k=tuple(k.shape), v=tuple(v.shape), dtype=str(q.dtype), device=q.device.type,
               causal=bool(causal), layout=layout, softmax_scale=softmax_scale,
               cu_seqlens=None if cu is None else tuple(cu), **(extra or {}))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be [batch, seq_local, heads, head_dim], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{op}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"{op}: k and v must have the same batch, sequence and heads, got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"{op}: q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{op}: q and k must hold the same local sequence length, got {q.shape[1]} and {k.shape[1]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"{op}: q and k head_dim must match, got {q.shape[3]} and {k.shape[3]}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{op}: q heads ({q.shape[2]}) must be divisible by k/v heads ({k.shape[2]})")
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"{op}: layout must be one of {LAYOUTS}, got {layout!r}")
        if layout.endswith("zigzag") and q.shape[1] % 2:
            raise ValueError(f"{op}: a zigzag shard holds two equal chunks, so seq_local must be even, got {q.shape[1]}")
    if same_kv_shape and k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")


def validated_layout(op: str, info, q, k, v, *, layout: str, causal: bool, softmax_scale, window_size, cu_seqlens,
                     same_kv_shape: bool = False, more=None):
    """The entry of an attention op over a layout: the local checks of :func:`validate_qkv`,
    ``more()`` (op-specific checks) and the layout's spans and mask (:func:`resolve_layout`), all
    inside one cross-rank check. Returns ``(spans, mask)``."""
    with rank_consistent(op, info) as check:
        validate_qkv(op, check, q, k, v, layout=layout, causal=causal, softmax_scale=softmax_scale,
                     extra={"window_size": window_size}, cu_seqlens=cu_seqlens, same_kv_shape=same_kv_shape)
        spans, mask = resolve_layout(op, layout, info.size, q.shape[1], causal, window_size, cu_seqlens)
        if more is not None:
            more()
    return spans, mask


def scale_of(q: torch.Tensor, softmax_scale) -> float:
    return float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])


def rows(t: torch.Tensor, ranges: list[tuple[int, int]], dim: int = 1) -> torch.Tensor:
    """Rows ``[a, b)`` of ``t`` along ``dim`` for each range, concatenated (a view when adjacent)."""
    if all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1)):
        return t.narrow(dim, ranges[0][0], ranges[-1][1] - ranges[0][0])
    return torch.cat([t.narrow(dim, a, b - a) for a, b in ranges], dim=dim)


def resolve_layout(op: str, layout: str, world: int, seq_local: int, causal: bool, window, cu_seqlens):
    """Every rank's spans and the :class:`~.blocks.Mask` (checks window and cu_seqlens)."""
    window = validate_window(op, window)
    cu = None if cu_seqlens is None else tuple(normalize_cu_seqlens(cu_seqlens, seq_local * world, op))
    try:
        spans = _layout_spans(layout, world, seq_local * world, cu)
    except ValueError as e:
        raise ValueError(f"{op}: {e}") from None
    return spans, Mask(causal=bool(causal), window=window, cu_seqlens=cu)


@functools.lru_cache(maxsize=256)
def _layout_spans(layout, world, seq_len, cu) -> tuple:
    """:func:`layout_spans` as nested tuples, cached (the block plans are cached on them)."""
    return tuple(tuple((int(a), int(n)) for a, n in r) for r in layout_spans(layout, world, seq_len, cu))


def fused_steps(backend: str, q: torch.Tensor) -> bool:
    """Whether ring steps run as one fused launch per step (Triton: merge and gradient accumulation
    in-kernel, span positions as runtime data) rather than per planned block."""
    return resolve_backend(backend, q) == "triton"


def shard_positions(spans, mask, device):
    """Cached :class:`~odysseus_kernels.kernels.attention.triton_attention.Positions` of a shard."""
    from ...kernels.attention.triton_attention import cached_positions

    return cached_positions(tuple(spans), mask.cu_seqlens, str(device))


def new_accumulators(q: torch.Tensor, nrows: int, dv: int):
    """Running (fp32; fp64 for fp64 inputs) ``out [B, nrows, H, Dv]`` (zeros) and ``lse [B, H, nrows]`` (-inf)."""
    b, _, h, _ = q.shape
    acc = acc_dtype(q.dtype)
    out = torch.zeros(b, nrows, h, dv, dtype=acc, device=q.device)
    lse = torch.full((b, h, nrows), float("-inf"), dtype=acc, device=q.device)
    return out, lse


def mask_args(b, mask) -> dict:
    """Mask keyword arguments of a planned block (none for a fully visible one)."""
    return mask.kernel_args(b.q_offset, b.k_offset) if b.masked else {"causal": False}


def _block_rows(span: slice, n: int, *tensors, dim: int = 1) -> tuple:
    """``tensors`` restricted to the rows ``span`` along ``dim`` (``None`` passes through); the tensors
    themselves when ``span`` covers all ``n`` rows (a block over a whole shard: ``t[:, 0:n]`` costs about a
    microsecond of host time per tensor and ring step)."""
    if span.start == 0 and span.stop == n:
        return tensors
    return tuple(None if t is None else t.narrow(dim, span.start, span.stop - span.start) for t in tensors)


def blocks_forward(q, k, v, blocks, out, lse, *, scale, backend, mask) -> None:
    """Merge the attention of every block (``q[:, b.q]`` vs ``k/v[:, b.k]``) into ``(out, lse)``."""
    nq, nk = q.shape[1], k.shape[1]
    for b in blocks:
        qb, ob = _block_rows(b.q, nq, q, out)
        (lb,) = _block_rows(b.q, nq, lse, dim=2)
        kb, vb = _block_rows(b.k, nk, k, v)
        attention_block_fwd(qb, kb, vb, softmax_scale=scale, out=ob, lse=lb, backend=backend, **mask_args(b, mask))


def blocks_attention(q, k, v, blocks, *, scale, backend, mask):
    """Fresh accumulators ``(out, lse)`` (contiguous, accumulator dtype) holding the attention of ``blocks``:
    a single block over all query rows is computed straight into them (no fill, no merge); anything else
    merges into filled ones (:func:`blocks_forward`)."""
    acc = acc_dtype(q.dtype)
    b0 = blocks[0] if len(blocks) == 1 else None
    if b0 is not None and b0.q_start == 0 and b0.q_stop == q.shape[1]:
        kb, vb = _block_rows(b0.k, k.shape[1], k, v)
        o, lse = attention_block_fwd(q, kb, vb, softmax_scale=scale, out_dtype=acc, backend=backend,
                                     **mask_args(b0, mask))
        return o.contiguous(), (lse if lse.dtype == acc else lse.to(acc)).contiguous()
    out, lse = new_accumulators(q, q.shape[1], v.shape[-1])
    blocks_forward(q, k, v, blocks, out, lse, scale=scale, backend=backend, mask=mask)
    return out, lse


def blocks_backward(dout, q, k, v, out, lse, delta, blocks, dq, dk, dv, *, scale, backend, mask) -> None:
    """Accumulate every block's gradients into ``dq``/``dk``/``dv`` (given the rows' final lse, and delta or
    ``out``: ``delta=None`` lets each block take it from ``out``, which PyTorch's CPU flash backward does anyway)."""
    nq, nk = q.shape[1], k.shape[1]
    for b in blocks:
        dob, qb, ob, dqb = _block_rows(b.q, nq, dout, q, out, dq)
        lb, db = _block_rows(b.q, nq, lse, delta, dim=2)
        kb, vb, dkb, dvb = _block_rows(b.k, nk, k, v, dk, dv)
        attention_block_bwd(dob, qb, kb, vb, ob, lb, softmax_scale=scale, delta=db, dq=dqb, dk=dkb, dv=dvb,
                            backend=backend, **mask_args(b, mask))


def row_delta(dout, out, dtype) -> torch.Tensor:
    """``rowsum(dout * out)`` as ``[B, H, S]`` in ``dtype`` (the backward's D term)."""
    return (dout.to(dtype) * out.to(dtype)).sum(-1).transpose(1, 2).contiguous()
