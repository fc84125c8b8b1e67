"""Single-device attention as a differentiable op over the block kernels (Triton on CUDA, torch on
CPU): the local core of TP-SP / Odysseus attention and of Ulysses after its all-to-all."""
from __future__ import annotations

import torch

from ..kernels.attention import attention_block_bwd, attention_block_fwd
from .layout import normalize_cu_seqlens


class _LocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, causal, window, cu_seqlens, backend):
        out, lse = attention_block_fwd(q, k, v, softmax_scale=scale, causal=causal, window=window,
                                       cu_seqlens=cu_seqlens, backend=backend)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.opts = (scale, causal, window, cu_seqlens, backend)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse=None):
        q, k, v, out, lse = ctx.saved_tensors
        scale, causal, window, cu_seqlens, backend = ctx.opts
        dq, dk, dv = attention_block_bwd(dout.contiguous(), q, k, v, out, lse, softmax_scale=scale,
                                         causal=causal, window=window, cu_seqlens=cu_seqlens, backend=backend)
        return dq, dk, dv, None, None, None, None, None


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    softmax_scale: float | None = None, window_size: tuple[int, int] = (-1, -1),
                    cu_seqlens=None, return_lse: bool = False, backend: str = "auto"):
    """Attention over the whole local sequence (no communication), differentiable.

    Args:
        q: ``[B, S, H, D]``; k, v: ``[B, S_k, H_kv, D]`` (``H % H_kv == 0``, GQA without repeating K/V).
        causal: causal mask aligned at the start (query i sees keys ``<= i``).
        softmax_scale: default ``1/sqrt(D)``. window_size: ``(left, right)`` sliding window, -1 = unbounded.
        cu_seqlens: cumulative document lengths of a packed sequence (attend within documents).
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), or a backend of the block kernels.
        return_lse: also return the log-sum-exp ``[B, H, S]`` (fp32; fp64 for fp64 inputs).
    Returns:
        ``[B, S, H, D]`` in ``q.dtype``, or ``(out, lse)`` with ``return_lse=True``.
    Example:
        >>> out = ok.local_attention(q, k, v, causal=True)
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"local_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"local_attention: {name} must be [batch, seq, heads, head_dim], got shape {tuple(t.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"local_attention: q heads ({q.shape[2]}) must be divisible by k/v heads ({k.shape[2]})")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"local_attention: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"local_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    cu = None if cu_seqlens is None else normalize_cu_seqlens(cu_seqlens, q.shape[1], "local_attention")
    if q.numel() == 0 or k.numel() == 0:
        out = torch.zeros(q.shape[:3] + (v.shape[-1],), dtype=q.dtype, device=q.device) + (q.sum() + k.sum() + v.sum()) * 0
        lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"), device=q.device,
                         dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
        return (out, lse) if return_lse else out
    out, lse = _LocalAttention.apply(q, k, v, softmax_scale, causal, tuple(window_size), cu, backend)
    return (out, lse) if return_lse else out
