"""The ``torch`` backend's fast path on CPU: PyTorch's CPU flash-attention kernels
(``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward), which return / take the
log-sum-exp, for the masks they express exactly: no documents, no window, and either no mask or a
causal mask aligned at the top left (``q_offset == k_offset``: query i sees keys ``j <= i``, so every
row sees a key). fp32/fp64, equal query and key/value heads, equal head dims. Everything else (and
the backward without ``out``, e.g. TokenRing's travelling rows) uses :mod:`.reference`. The backward
recomputes ``delta = rowsum(dout * out)`` from the given ``out`` (a precomputed delta is the same value).
"""
from __future__ import annotations

import torch

from ..._util import as_dtype


def eligible(q, k, v, *, causal, q_offset, k_offset, window, cu_seqlens) -> bool:
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64) and k.dtype == q.dtype
            and v.dtype == q.dtype and cu_seqlens is None and tuple(window) == (-1, -1)
            and (not causal or q_offset == k_offset) and q.shape[1] > 0 and k.shape[1] > 0 and q.shape[0] > 0
            and q.shape[2] == k.shape[2] and q.shape[3] == v.shape[3])


def fwd(q, k, v, *, softmax_scale, causal, out_dtype):
    """``(out [B, Sq, H, D], lse [B, H, Sq])`` like :func:`.reference.attention_block_fwd_torch`."""
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, bool(causal), attn_mask=None,
        scale=softmax_scale)[:2]
    return as_dtype(o.transpose(1, 2), out_dtype or q.dtype), lse


def bwd(dout, q, k, v, out, lse, *, softmax_scale, causal, grad_dtype):
    """``(dq, dk, dv)`` of a block given the rows' final ``out``/``lse`` (the kernel computes delta from them)."""
    dt = q.dtype
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        as_dtype(dout, dt).transpose(1, 2), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        as_dtype(out, dt).transpose(1, 2), as_dtype(lse, dt).contiguous(), 0.0, bool(causal), attn_mask=None,
        scale=softmax_scale)
    gd = grad_dtype or dt
    return as_dtype(dq.transpose(1, 2), gd), as_dtype(dk.transpose(1, 2), gd), as_dtype(dv.transpose(1, 2), gd)
