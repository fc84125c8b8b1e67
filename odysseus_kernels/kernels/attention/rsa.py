"""Local pieces of Ring Self-Attention (Li et al. 2021), which keeps whole score rows: scores of a
query shard against one key shard, their use with a value shard, and the block gradients. Torch
ops on any device; GQA via grouped query views (no repeated K/V). Shapes: q/dO ``[B, C, H, D]``,
k/v ``[B, Ck, H_kv, D]``, score and probability blocks ``[B, H_kv, G, C, Ck]`` (``G = H/H_kv``)."""
from __future__ import annotations

import torch


def _grouped(x, hkv):  # [B, C, H, D] -> [B, H_kv, G, C, D]
    b, c, h, d = x.shape
    return x.view(b, c, hkv, h // hkv, d).permute(0, 2, 3, 1, 4)


def _ungrouped(x):  # [B, H_kv, G, C, D] -> [B, C, H, D]
    b, hkv, g, c, d = x.shape
    return x.permute(0, 3, 1, 2, 4).reshape(b, c, hkv * g, d)


def rsa_scores(q, k, scale: float, mask: torch.Tensor | None, dtype) -> torch.Tensor:
    """``scale * q k^T`` in ``dtype`` with masked entries at -inf: ``[B, H_kv, G, C, Ck]``."""
    s = torch.einsum("bhgqd,bkhd->bhgqk", _grouped(q, k.shape[2]).to(dtype), k.to(dtype)) * scale
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def rsa_apply(p, v) -> torch.Tensor:
    """``p v`` for a probability block and a value shard: ``[B, C, H, D]`` in ``p.dtype``."""
    return _ungrouped(torch.einsum("bhgqk,bkhd->bhgqd", p, v.to(p.dtype)))


def rsa_block_grads(p, dout, delta, q, k, v, scale: float):
    """Gradients through one key/value shard given its probability block ``p`` and
    ``delta = rowsum(dO * O)`` ``[B, H_kv, G, C]``: returns ``(dq_part [B, C, H, D],
    dk [B, Ck, H_kv, D], dv [B, Ck, H_kv, D])`` in ``p.dtype``."""
    hkv = k.shape[2]
    do = _grouped(dout, hkv).to(p.dtype)
    dp = torch.einsum("bhgqd,bkhd->bhgqk", do, v.to(p.dtype))
    ds = p * (dp - delta.unsqueeze(-1))
    dq = _ungrouped(torch.einsum("bhgqk,bkhd->bhgqd", ds, k.to(p.dtype))) * scale
    dk = torch.einsum("bhgqk,bhgqd->bkhd", ds, _grouped(q, hkv).to(p.dtype)) * scale
    dv = torch.einsum("bhgqk,bhgqd->bkhd", p, do)
    return dq, dk, dv


def rsa_delta(dout, out, hkv: int, dtype) -> torch.Tensor:
    """``rowsum(dO * O)`` grouped: ``[B, H_kv, G, C]``."""
    return (_grouped(dout, hkv).to(dtype) * _grouped(out, hkv).to(dtype)).sum(-1)
