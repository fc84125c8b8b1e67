"""Ring Self-Attention (RSA, Li et al. 2021, "Sequence Parallelism: Long Sequence Training from
System Perspective"): the original two-pass scheme, kept as a baseline.

Forward: K circulates around the ring so each rank builds its full score rows ``[B, H, C, L]``,
softmax runs locally, then V circulates to compute the output. Backward (as in the paper): K and V
circulate again; each rank computes full-length dK/dV partials, reduce-scattered to their owners.
The probability rows are kept for backward: memory ``B*H*C*L*4`` bytes per rank, quadratic in the
sequence length by design (that is why ring / flash-style attention replaced it).

Bytes received per rank: forward ``2 (N-1) B C H_kv D b`` (kind ``p2p``, K then V); backward the
same ``p2p`` again plus a ``reduce_scatter`` of fp32 dK/dV ``2 (N-1)/N B L H_kv D * 4``.
"""
from __future__ import annotations

import torch

from ..._util import acc_dtype
from ...comm import group_info, rank_consistent, reduce_scatter
from ...kernels.attention.rsa import rsa_apply, rsa_block_grads, rsa_delta, rsa_scores
from ..layout import local_positions
from ..ring import Rotation, run_schedule
from .common import DEFAULT_LAYOUT, empty_attention, is_empty, scale_of, validate_qkv


def _mask(qpos, kpos, causal):
    return (kpos.view(1, -1) <= qpos.view(-1, 1)) if causal else None


class _RSA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, info, layout, causal, scale):
        n, c = info.size, q.shape[1]
        acc = acc_dtype(q.dtype)
        pos = [local_positions(c, rank=r, world_size=n, layout=layout, device=q.device) for r in range(n)]
        b, _, h, _ = q.shape
        hkv = k.shape[2]
        scores = torch.empty(b, hkv, h // hkv, c, n * c, dtype=acc, device=q.device)  # rank-major key columns

        def put_scores(src, k_src):
            scores[..., src * c:(src + 1) * c] = rsa_scores(q, k_src, scale, _mask(pos[info.rank], pos[src], causal),
                                                            acc)

        run_schedule(Rotation(info, k.contiguous(), put_scores), info)
        lse = torch.logsumexp(scores, dim=-1).reshape(b, h, c)  # [B, H_kv, G, C] -> [B, H, C]
        p = torch.softmax(scores, dim=-1)
        scores = None  # free the raw scores (the closure above holds the name)
        out = torch.zeros(q.shape[:3] + (v.shape[-1],), dtype=acc, device=q.device)

        def add_values(src, v_src):
            out.add_(rsa_apply(p[..., src * c:(src + 1) * c], v_src))

        run_schedule(Rotation(info, v.contiguous(), add_values), info)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, p)
        ctx.opts = (info, scale)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse=None):
        q, k, v, out, p = ctx.saved_tensors
        info, scale = ctx.opts
        n, c = info.size, q.shape[1]
        acc = p.dtype
        delta = rsa_delta(dout, out, k.shape[2], acc)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dkv = torch.zeros((n, 2) + tuple(k.shape), dtype=acc, device=k.device)  # rank-major partials

        def grads(src, kv_src):
            g_q, g_k, g_v = rsa_block_grads(p[..., src * c:(src + 1) * c], dout, delta, q, kv_src[0], kv_src[1], scale)
            dq.add_(g_q)
            dkv[src, 0] = g_k
            dkv[src, 1] = g_v

        run_schedule(Rotation(info, torch.stack([k, v]), grads), info)
        mine = reduce_scatter(dkv.view((n * 2,) + tuple(k.shape)), group=info)  # [2, B, C, H_kv, D]
        return dq.to(q.dtype), mine[0].to(k.dtype), mine[1].to(v.dtype), None, None, None, None


def ring_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                        softmax_scale: float | None = None, layout: str = DEFAULT_LAYOUT, return_lse: bool = False):
    """Ring Self-Attention (2021 baseline): full score rows built by circulating K, then V.

    Args:
        q: ``[B, C, H, D]``; k, v: ``[B, C, H_kv, D]`` shards in ``layout``.
        group, causal, softmax_scale, return_lse: as in :func:`ring_attention`.
    Returns:
        ``[B, C, H, D]`` in ``q.dtype`` (``(out, lse)`` with ``return_lse=True``). Keeps ``[B, H, C, L]``
        fp32 probabilities for backward.
    Example::

        out = ok.ring_self_attention(q_local, k_local, v_local, causal=True)
    """
    info = group_info(group)
    with rank_consistent("ring_self_attention", info) as check:
        validate_qkv("ring_self_attention", check, q, k, v, layout=layout, causal=causal,
                     softmax_scale=softmax_scale, same_kv_shape=True)
    if is_empty(q, k):
        return empty_attention(q, k, v, return_lse)
    out, lse = _RSA.apply(q, k, v, info, layout, causal, scale_of(q, softmax_scale))
    return (out, lse) if return_lse else out


def rsa_comm_bytes(world, batch, seq_local, kv_heads, head_dim, elem_bytes) -> dict:
    """Closed-form bytes received per rank: ``p2p`` forward/backward and the backward ``reduce_scatter``."""
    s_kv = batch * seq_local * kv_heads * head_dim
    acc = 8 if elem_bytes == 8 else 4
    p2p = 2 * (world - 1) * s_kv * elem_bytes
    return {"forward": p2p, "backward": p2p, "backward_reduce_scatter": 2 * (world - 1) * s_kv * acc}


def rsa_memory_bytes(batch, heads, seq_local, world) -> int:
    """Bytes of the probability rows RSA keeps for backward (fp32): quadratic in the sequence."""
    return batch * heads * seq_local * seq_local * world * 4
