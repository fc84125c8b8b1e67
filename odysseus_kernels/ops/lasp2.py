"""LASP-2: sequence-parallel linear attention with one AllGather of d x d states per pass.

Forward on rank t (contiguous shards of C tokens): the shard's state ``M_t`` (``[B, H, Dk, Dv]``,
fp32) is computed first and its AllGather is posted; the intra-shard attention runs while it is in
flight; then the incoming state ``S_t`` (the exclusive decayed prefix of the gathered states,
:func:`~odysseus_kernels.kernels.linear_attention.state_scan`) adds ``lambda^(i+1) q_i S_t``.
Backward: ``G_t = sum_i lambda^(i+1) q_i^T dO_i`` is all-gathered (posted before the intra-shard
gradient), its exclusive decayed suffix ``R_t`` gives ``dK += lambda^(C-1-s) v_s R_t^T`` and
``dV += lambda^(C-1-s) k_s R_t``, and ``dQ += lambda^(i+1) dO_i S_t^T`` (REFERENCE.md). Non-causal:
``O_t = Q_t sum_j M_j`` and ``R = sum_j G_j``.

Bytes received per rank (ledger kind ``all_gather``), forward and backward each:
``(N-1) * B * H * Dk * Dv * 4`` (8 for fp64 inputs), independent of the sequence length.
"""
from __future__ import annotations

import torch

from ..comm import all_gather_async, group_info, rank_consistent
from ..kernels.linear_attention import chunk_state, inter_chunk, inter_chunk_backward, state_grad, state_scan
from ..kernels.linear_attention.api import intra_chunk_bwd, intra_chunk_fwd


def _gather_states(m: torch.Tensor, info):
    out = m.new_empty((info.size * m.shape[0],) + tuple(m.shape[1:]))
    return all_gather_async(out, m.contiguous(), group=info)


class _LASP2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_decay, info, causal, scale, block, backend):
        qs = q * scale
        m = chunk_state(k, v, log_decay if causal else None)  # [B, H, Dk, Dv]
        handle = _gather_states(m, info)
        out = intra_chunk_fwd(qs, k, v, log_decay=log_decay, block=block, backend=backend) if causal else None
        # (the intra-shard compute above overlaps the gather)
        ms = handle.wait().view((info.size,) + tuple(m.shape))
        if causal:
            chunk_decay = None if log_decay is None else log_decay * q.shape[1]
            s = state_scan(ms, chunk_decay, reverse=False)[info.rank]
            out = out + inter_chunk(qs, s, log_decay=log_decay)
        else:
            s = ms.sum(0)
            out = inter_chunk(qs, s)
        ctx.save_for_backward(q, k, v, s, log_decay)
        ctx.opts = (info, causal, scale, block, backend)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, s, log_decay = ctx.saved_tensors
        info, causal, scale, block, backend = ctx.opts
        acc = s.dtype
        do = dout.to(acc)
        qs = q * scale
        ld = log_decay if causal else None
        handle = _gather_states(state_grad(qs, do, log_decay=ld), info)  # G_t, posted first
        if causal:  # the intra-shard gradients overlap the gather
            dq, dk, dv = (g.to(acc) for g in intra_chunk_bwd(qs, k, v, do, log_decay=ld, block=block, backend=backend))
        gs = handle.wait().view((info.size,) + tuple(s.shape))
        if causal:
            r = state_scan(gs, None if ld is None else ld * q.shape[1], reverse=True)[info.rank]
        else:  # every shard's output reads every state
            r = gs.sum(0)
            dq, dk, dv = (torch.zeros(t.shape, dtype=acc, device=t.device) for t in (q, k, v))
        dq_inter, dk_inter, dv_inter = inter_chunk_backward(do, k, v, s, r, log_decay=ld)
        dq = (dq + dq_inter) * scale  # both w.r.t. the scaled q
        return (dq.to(q.dtype), (dk + dk_inter).to(k.dtype), (dv + dv_inter).to(v.dtype)) + (None,) * 6


def lasp2_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None,
                           decay: torch.Tensor | None = None, causal: bool = True, scale: float = 1.0,
                           block: int = 64, backend: str = "auto") -> torch.Tensor:
    """LASP-2 linear attention over the sequence sharded contiguously across ``group``.

    Args:
        q, k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]`` (contiguous shards, ``C = L/N``).
        decay: ``None`` (lambda = 1) or a ``[H]`` tensor of log-decays ``<= 0`` (lambda = exp(decay));
            treated as a constant (no gradient). Causal only.
        causal: ``o_t = sum_{s<=t} lambda^(t-s) (q_t . k_s) v_s``; non-causal ``o_t = q_t sum_s k_s^T v_s``.
        scale: multiplies q. No normaliser (as in LASP-2).
        block: tokens per block of the intra-shard computation (memory O(C * block)).
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"torch"`` (blocked torch path) or
            ``"triton"`` (fused-chunk kernels; on CPU under ``TRITON_INTERPRET=1``). Exact at every token.
    Returns:
        ``[B, C, H, Dv]`` in ``q.dtype``.
    Communication: one AllGather of the ``[B, H, Dk, Dv]`` fp32 states in forward and one in backward:
    ``(N-1) B H Dk Dv 4`` bytes received per rank per pass, whatever the sequence length.
    Example::

        o = ok.lasp2_linear_attention(q_local, k_local, v_local, decay=torch.full((H,), -0.01))
    """
    info = group_info(group)
    with rank_consistent("lasp2_linear_attention", info) as check:
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"lasp2_linear_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        check.meta(q=tuple(q.shape), k=tuple(k.shape), v=tuple(v.shape), dtype=str(q.dtype), causal=bool(causal),
                   scale=float(scale), decay=None if decay is None else tuple(decay.shape), block=block)
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.dim() != 4:
                raise ValueError(f"lasp2_linear_attention: {name} must be [batch, seq_local, heads, head_dim], "
                                 f"got shape {tuple(t.shape)}")
        if q.shape != k.shape:
            raise ValueError(f"lasp2_linear_attention: q and k must have the same shape, got {tuple(q.shape)} and "
                             f"{tuple(k.shape)}")
        if v.shape[:3] != q.shape[:3]:
            raise ValueError(f"lasp2_linear_attention: v must be [batch, seq_local, heads, head_dim_v] matching q "
                             f"{tuple(q.shape[:3])}, got {tuple(v.shape)}")
        if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
            raise TypeError(f"lasp2_linear_attention: q, k, v must share a floating dtype, got {q.dtype}, "
                            f"{k.dtype}, {v.dtype}")
        if decay is not None:
            if not causal:
                raise ValueError("lasp2_linear_attention: decay needs causal=True")
            if not isinstance(decay, torch.Tensor) or tuple(decay.shape) != (q.shape[2],):
                raise ValueError(f"lasp2_linear_attention: decay must be a [heads] = [{q.shape[2]}] tensor of "
                                 f"log-decays, got {getattr(decay, 'shape', decay)}")
            if bool((decay > 0).any()):
                raise ValueError(f"lasp2_linear_attention: decay holds log-decays, which must be <= 0, got max "
                                 f"{decay.max().item():.4g}")
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"lasp2_linear_attention: backend must be 'auto', 'torch' or 'triton', got {backend!r}")
        if block < 1:
            raise ValueError(f"lasp2_linear_attention: block must be >= 1, got {block}")
    log_decay = None if decay is None else decay.detach()
    return _LASP2.apply(q, k, v, log_decay, info, bool(causal), float(scale), int(block), backend)


def lasp2_comm_bytes(world: int, batch: int, heads: int, dk: int, dv: int, elem_bytes: int = 4) -> dict:
    """Closed-form bytes received per rank (kind ``all_gather``), forward and backward."""
    acc = 8 if elem_bytes == 8 else 4
    per = (world - 1) * batch * heads * dk * dv * acc
    return {"forward": per, "backward": per}
