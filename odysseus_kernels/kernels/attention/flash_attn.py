"""Optional flash-attn backend (``pip install 'odysseus-kernels[flash]'``).

Used only for masks flash-attn expresses exactly: no documents, and either no mask at all or a
causal / window mask whose alignment matches flash-attn's bottom-right convention
(``q_offset - k_offset == Sk - Sq``). ``backend="auto"`` never picks it; ``backend="flash_attn"``
with an inexpressible mask or without flash-attn installed raises an actionable error. The
backward recomputes the forward under autograd (flash-attn's public API has no standalone
backward with a given lse), so it costs one extra forward.
"""
from __future__ import annotations

import torch

try:
    import flash_attn
except ImportError:  # optional
    flash_attn = None


def expressible(sq: int, sk: int, causal: bool, q_offset: int, k_offset: int, window, cu_seqlens) -> bool:
    if cu_seqlens is not None:
        return False
    if not causal and tuple(window) == (-1, -1):
        return True
    return q_offset - k_offset == sk - sq


def _check(q, k, causal, q_offset, k_offset, window, cu_seqlens):
    if not expressible(q.shape[1], k.shape[1], causal, q_offset, k_offset, window, cu_seqlens):
        raise ValueError("backend='flash_attn' cannot express this mask (documents, or causal/window offsets that "
                         "differ from flash-attn's bottom-right alignment); use backend='triton' or 'torch'")
    if flash_attn is None:
        raise ImportError("backend='flash_attn' needs flash-attn: pip install 'odysseus-kernels[flash]' "
                          "(or use backend='triton' / 'auto')")
    if q.dtype not in (torch.float16, torch.bfloat16) or not q.is_cuda:
        raise TypeError(f"backend='flash_attn' needs fp16/bf16 CUDA tensors, got {q.dtype} on {q.device}")


def _call(q, k, v, scale, causal, window):
    return flash_attn.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=tuple(window),
                                      return_attn_probs=True)


def attention_block_fwd_flash(q, k, v, *, softmax_scale=None, causal=False, q_offset=0, k_offset=0,
                              window=(-1, -1), cu_seqlens=None, out_dtype=None):
    _check(q, k, causal, q_offset, k_offset, window, cu_seqlens)
    out, lse, _ = _call(q, k, v, softmax_scale, causal, window)
    return out.to(out_dtype or q.dtype), lse.float()


def attention_block_bwd_flash(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False, q_offset=0,
                              k_offset=0, window=(-1, -1), cu_seqlens=None, delta=None, grad_dtype=None):
    _check(q, k, causal, q_offset, k_offset, window, cu_seqlens)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        o = _call(*leaves, softmax_scale, causal, window)[0]
        grads = torch.autograd.grad(o, leaves, dout.to(o.dtype))
    gd = grad_dtype or q.dtype
    return tuple(g.to(gd) for g in grads)
