"""All-gather-KV attention (LASP-2H's softmax layers, Llama-3 context parallelism): one AllGather
of K and V, local queries against all keys, a ReduceScatter of dK and dV in backward.

Forward receives ``2 (N-1) B C H_kv D b`` bytes per rank (kind ``all_gather``), the same volume as
a ring pass but as one collective; the gathered K/V are kept for backward (no second gather), whose
fp32 dK/dV partials (over the full sequence) are reduce-scattered to their owners (kind
``reduce_scatter``, ``2 (N-1)/N * B L H_kv D * 4`` bytes). The mask is exact for any layout: the
blocks are planned from the chunk lists of all ranks.
"""
from __future__ import annotations

import torch

from ..._util import acc_dtype
from ...comm import all_gather, group_info, reduce_scatter
from ...kernels.attention.api import resolve_backend
from .blocks import plan_blocks
from .common import (DEFAULT_LAYOUT, blocks_attention, blocks_backward, empty_attention, is_empty, row_delta,
                     scale_of, validated_layout)


class _AllGatherKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, info, spans, mask, scale, backend):
        kv = all_gather(torch.stack([k, v], dim=1).contiguous(), group=info)  # [N*B, 2, C, H_kv, D] rank-major
        n, b = info.size, q.shape[0]
        kv = kv.view(n, b, 2, *k.shape[1:]).permute(2, 1, 0, 3, 4, 5).reshape(2, b, n * k.shape[1], *k.shape[2:])
        blocks = plan_blocks(spans[info.rank], [sp for r in spans for sp in r], mask)
        out, lse = blocks_attention(q, kv[0], kv[1], blocks, scale=scale, backend=backend, mask=mask)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, kv, out, lse)
        ctx.opts = (info, blocks, scale, backend, k.dtype, mask)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse=None):
        q, kv, out, lse = ctx.saved_tensors
        info, blocks, scale, backend, kdtype, mask = ctx.opts
        acc = acc_dtype(q.dtype)
        dout = dout.contiguous()
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        dkv = torch.zeros(kv.shape, dtype=acc, device=kv.device)  # [2, B, L, H_kv, D]
        # delta once for the Triton blocks; other backends take it from out (PyTorch's CPU flash kernel does anyway)
        delta = row_delta(dout, out, acc) if resolve_backend(backend, q) == "triton" else None
        blocks_backward(dout, q, kv[0], kv[1], out, lse, delta, blocks, dq, dkv[0], dkv[1], scale=scale,
                        backend=backend, mask=mask)
        n, b, L = info.size, q.shape[0], kv.shape[2]
        rank_major = dkv.view(2, b, n, L // n, *kv.shape[3:]).permute(2, 0, 1, 3, 4, 5).contiguous()
        mine = reduce_scatter(rank_major.view(n * 2, b, L // n, *kv.shape[3:]), group=info)  # [2, B, C, H_kv, D]
        return dq.to(q.dtype), mine[0].to(kdtype), mine[1].to(kdtype), None, None, None, None, None


def allgather_kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                           softmax_scale: float | None = None, layout: str = DEFAULT_LAYOUT,
                           window_size: tuple[int, int] = (-1, -1), cu_seqlens=None, return_lse: bool = False,
                           backend: str = "auto"):
    """Attention of local queries against all keys after one AllGather of K and V.

    Args:
        q: ``[B, C, H, D]``; k, v: ``[B, C, H_kv, D]`` shards in ``layout`` (``"contiguous"`` or
            ``"zigzag"``; only the ``H_kv`` heads are gathered).
        group, causal, softmax_scale, window_size, cu_seqlens, return_lse, backend: as in
            :func:`ring_attention` (with a packed stream split contiguously, documents may cross ranks:
            the Llama-3 style).
    Returns:
        ``[B, C, H, D]`` in ``q.dtype`` (``(out, lse)`` with ``return_lse=True``).
    Communication: forward one AllGather of K and V (``2 (N-1)/N B L H_kv D`` elements received),
    backward one ReduceScatter of fp32 dK and dV; the gathered K/V stay in memory until backward.
    Example::

        out = ok.allgather_kv_attention(q_local, k_local, v_local, causal=True)
    """
    info = group_info(group)
    spans, mask = validated_layout("allgather_kv_attention", info, q, k, v, layout=layout, causal=causal,
                                   softmax_scale=softmax_scale, window_size=window_size, cu_seqlens=cu_seqlens,
                                   same_kv_shape=True)
    if is_empty(q, k):
        return empty_attention(q, k, v, return_lse)
    out, lse = _AllGatherKV.apply(q, k, v, info, spans, mask, scale_of(q, softmax_scale), backend)
    return (out, lse) if return_lse else out


def allgather_kv_comm_bytes(world, batch, seq_local, kv_heads, head_dim, elem_bytes) -> dict:
    """Closed-form bytes received per rank: forward ``all_gather``, backward ``reduce_scatter``."""
    s_kv = batch * seq_local * kv_heads * head_dim
    acc = 8 if elem_bytes == 8 else 4
    return {"forward": 2 * (world - 1) * s_kv * elem_bytes, "backward": 2 * (world - 1) * s_kv * acc}
