"""Pure-PyTorch block attention: the oracle of every test and the CPU path.

Layout ``[batch, seq, heads, head_dim]``; ``lse`` is ``[batch, heads, seq]`` fp32 (fp64 for fp64
inputs). GQA/MQA: ``k``/``v`` have ``H_kv`` heads dividing ``H``; query head ``h`` uses kv head
``h // (H / H_kv)`` (no repeated K/V is materialised: queries are viewed as ``[.., H_kv, G, ..]``).

Mask (all positions global): query i sits at ``q_offset + i``, key j at ``k_offset + j``;
``causal`` keeps ``kpos <= qpos``; ``window=(left, right)`` keeps
``qpos - left <= kpos <= qpos + right`` (``-1`` = unbounded); ``cu_seqlens`` (global cumulative
document lengths of a packed stream) keeps keys of the query's document. A row that sees no key gets
``out = 0`` and ``lse = -inf`` (never NaN), which :func:`merge_attention` treats exactly.
"""
from __future__ import annotations

import math

import torch

from ..._util import acc_dtype as _acc_dtype


def block_mask(sq: int, sk: int, *, causal: bool, q_offset: int = 0, k_offset: int = 0,
               window: tuple[int, int] = (-1, -1), cu_seqlens=None, device=None) -> torch.Tensor | None:
    """Boolean ``[sq, sk]`` mask (True = attend), or ``None`` when nothing is masked."""
    left, right = window
    if not causal and left < 0 and right < 0 and cu_seqlens is None:
        return None
    qpos = torch.arange(sq, device=device).view(-1, 1) + q_offset
    kpos = torch.arange(sk, device=device).view(1, -1) + k_offset
    m = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if causal:
        m &= kpos <= qpos
    if left >= 0:
        m &= kpos >= qpos - left
    if right >= 0:
        m &= kpos <= qpos + right
    if cu_seqlens is not None:
        cu = torch.as_tensor(cu_seqlens, device=device)
        m &= torch.searchsorted(cu, qpos, right=True) == torch.searchsorted(cu, kpos, right=True)
    return m


def _grouped(q: torch.Tensor, k: torch.Tensor):
    b, sq, h, d = q.shape
    hkv = k.shape[2]
    if h % hkv:
        raise ValueError(f"query heads ({h}) must be divisible by key/value heads ({hkv})")
    # [B, Sq, H, D] -> [B, Hkv, G, Sq, D]
    return q.view(b, sq, hkv, h // hkv, d).permute(0, 2, 3, 1, 4), hkv, h // hkv


def _scores(q, k, scale, mask, acc):
    qg, hkv, g = _grouped(q, k)
    kt = k.permute(0, 2, 1, 3).to(acc)  # [B, Hkv, Sk, D]
    s = torch.einsum("bhgqd,bhkd->bhgqk", qg.to(acc), kt) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s  # [B, Hkv, G, Sq, Sk]


def _probs(s):
    lse = torch.logsumexp(s, dim=-1)  # [B, Hkv, G, Sq]
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.exp(s - safe.unsqueeze(-1)), lse


def attention_block_fwd_torch(q, k, v, *, softmax_scale=None, causal=False, q_offset=0, k_offset=0,
                              window=(-1, -1), cu_seqlens=None, out_dtype=None):
    """Reference forward. Returns ``(out [B, Sq, H, Dv], lse [B, H, Sq])``."""
    b, sq, h, d = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    acc = _acc_dtype(q.dtype)
    mask = block_mask(sq, k.shape[1], causal=causal, q_offset=q_offset, k_offset=k_offset,
                      window=window, cu_seqlens=cu_seqlens, device=q.device)
    p, lse = _probs(_scores(q, k, scale, mask, acc))
    o = torch.einsum("bhgqk,bhkd->bhgqd", p, v.permute(0, 2, 1, 3).to(acc))  # [B, Hkv, G, Sq, Dv]
    out = o.permute(0, 3, 1, 2, 4).reshape(b, sq, h, v.shape[-1])
    return out.to(out_dtype or q.dtype), lse.reshape(b, h, sq)


def attention_block_bwd_torch(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False, q_offset=0,
                              k_offset=0, window=(-1, -1), cu_seqlens=None, delta=None, grad_dtype=None):
    """Reference backward of a block given the row's final ``out`` and ``lse`` (see REFERENCE.md).

    ``delta`` (``[B, H, Sq]``, = rowsum(dout * out)) may be passed precomputed. Returns
    ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v``, in ``grad_dtype`` (default: the input dtype).
    """
    b, sq, h, d = q.shape
    hkv = k.shape[2]
    g = h // hkv
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    acc = _acc_dtype(q.dtype)
    mask = block_mask(sq, k.shape[1], causal=causal, q_offset=q_offset, k_offset=k_offset,
                      window=window, cu_seqlens=cu_seqlens, device=q.device)
    s = _scores(q, k, scale, mask, acc)
    lse_g = lse.to(acc).reshape(b, hkv, g, sq)
    safe = torch.where(torch.isinf(lse_g), torch.zeros_like(lse_g), lse_g)
    p = torch.exp(s - safe.unsqueeze(-1))  # [B, Hkv, G, Sq, Sk]
    do_g = dout.to(acc).view(b, sq, hkv, g, -1).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, Sq, Dv]
    if delta is None:
        delta = (dout.to(acc) * out.to(acc)).sum(-1).permute(0, 2, 1)  # [B, H, Sq]
    delta_g = delta.to(acc).reshape(b, hkv, g, sq, 1)
    vt = v.permute(0, 2, 1, 3).to(acc)
    kt = k.permute(0, 2, 1, 3).to(acc)
    dv = torch.einsum("bhgqk,bhgqd->bhkd", p, do_g)
    dp = torch.einsum("bhgqd,bhkd->bhgqk", do_g, vt)
    ds = p * (dp - delta_g)
    qg, _, _ = _grouped(q, k)
    dq = torch.einsum("bhgqk,bhkd->bhgqd", ds, kt) * scale
    dk = torch.einsum("bhgqk,bhgqd->bhkd", ds, qg.to(acc)) * scale
    gd = grad_dtype or q.dtype
    dq = dq.permute(0, 3, 1, 2, 4).reshape(b, sq, h, d)
    return dq.to(gd), dk.permute(0, 2, 1, 3).to(gd), dv.permute(0, 2, 1, 3).to(gd)


def merge_attention_torch(out, lse, block_out, block_lse):
    """In place: merge a block's partial ``(block_out, block_lse)`` into the running ``(out, lse)``.

    ``out`` ``[B, S, H, D]`` and ``lse`` ``[B, H, S]`` are fp32 accumulators (fp64 allowed).
    Exact when either side saw no keys (lse = -inf): never NaN. Returns ``(out, lse)``.
    """
    new = torch.logaddexp(lse, block_lse.to(lse.dtype))
    safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
    w_old = torch.exp(lse - safe).transpose(1, 2).unsqueeze(-1)  # [B, S, H, 1]
    w_new = torch.exp(block_lse.to(lse.dtype) - safe).transpose(1, 2).unsqueeze(-1)
    out.mul_(w_old).add_(block_out.to(out.dtype) * w_new)
    lse.copy_(new)
    return out, lse


def attention_ref(q, k, v, *, softmax_scale=None, causal=False, q_offset=0, k_offset=0, window=(-1, -1),
                  cu_seqlens=None):
    """Differentiable full attention (autograd through plain torch ops), for tests' float64 oracles.

    Same conventions as :func:`attention_block_fwd_torch`; returns ``out`` only, in ``q.dtype``.
    """
    out, _ = attention_block_fwd_torch(q, k, v, softmax_scale=softmax_scale, causal=causal,
                                       q_offset=q_offset, k_offset=k_offset, window=window, cu_seqlens=cu_seqlens)
    return out
