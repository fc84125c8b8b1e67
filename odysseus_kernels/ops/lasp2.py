"""LASP-2: sequence-parallel linear attention with one AllGather of d x d states per pass.

Rank ``t`` of ``N`` holds ``C`` consecutive tokens. Per (batch, head), with ``lambda = exp(decay)``
(1 without decay), ``a = lambda^C`` the decay across one whole shard and ``i``/``s`` positions in
the shard:

Forward. The shard's own state ``M_t = sum_s lambda^(C-1-s) k_s^T v_s`` ([B, H, Dk, Dv], fp32) comes
out of the first chunked pass (:func:`~..kernels.linear_attention.chunk_fwd_h`); its AllGather is
posted at once and the intra-shard output (:func:`~..kernels.linear_attention.chunk_fwd_o`) runs
while it is in flight. The incoming state is the exclusive decayed prefix
``S_t = sum_{j<t} a^(t-1-j) M_j`` (``state_scan(.., reverse=False)``) and
``o_i += lambda^(i+1) q_i S_t``.

Backward, derived from the forward. ``S_j`` enters shard ``j``'s output only through
``lambda^(i+1) q_i S_j``, so ``dL/dS_j = G_j = sum_{i in j} lambda^(i+1) q_i^T dO_i`` — a local
quantity, the last value of the state-gradient pass (:func:`~..kernels.linear_attention.chunk_bwd_dh`),
all-gathered as soon as it is known. ``M_t`` enters every later ``S_j`` with weight ``a^(j-1-t)``,
hence ``R_t = dL/dM_t = sum_{j>t} a^(j-1-t) G_j``: the exclusive suffix with the *same* chunk decay,
``state_scan(.., reverse=True)``; no other weighting is needed. Through
``M_t = sum_s lambda^(C-1-s) k_s^T v_s``: ``dk_s += lambda^(C-1-s) v_s R_t^T`` and
``dv_s += lambda^(C-1-s) k_s R_t``; through the output term: ``dq_i += lambda^(i+1) dO_i S_t^T``
(:func:`~..kernels.linear_attention.inter_chunk_backward`). The intra-shard gradients
(:func:`~..kernels.linear_attention.chunk_bwd_dqkv`) run while the gather is in flight.

Non-causal: ``O_t = Q_t sum_j M_j`` with ``M_j = K_j^T V_j``; backward ``R = sum_j G_j`` with
``G_j = Q_j^T dO_j``, ``dQ = dO (sum_j M_j)^T``, ``dK = V R^T``, ``dV = K R``. The sums are the
inclusive scans at the far end, so every combination goes through :func:`_combine`, the one call of
:func:`~..kernels.linear_attention.state_scan`.

Bytes received per rank (ledger kind ``all_gather``), forward and backward each:
``(N-1) * B * H * Dk * Dv * 4`` (8 for fp64 inputs, whose states stay fp64), independent of ``C``.
"""
from __future__ import annotations

import torch

from ..comm import all_gather_async, group_info, rank_consistent
from ..kernels.linear_attention import (
    chunk_bwd_dh,
    chunk_bwd_dqkv,
    chunk_fwd_h,
    chunk_fwd_o,
    chunk_state,
    inter_chunk,
    inter_chunk_backward,
    state_grad,
    state_scan,
)
from ..kernels.linear_attention.api import BACKENDS, resolve
from ..kernels.linear_attention.reference import acc_dtype


def _gather_states(m: torch.Tensor, info):
    """Post the pass's single AllGather of the ``[B, H, Dk, Dv]`` state; ``wait()`` gives ``[N, ...]``."""
    out = m.new_empty((info.size * m.shape[0],) + tuple(m.shape[1:]))
    return all_gather_async(out, m.contiguous(), group=info)


def _combine(handle, info, log_decay, seq_local: int, causal: bool, reverse: bool) -> torch.Tensor:
    """Wait for the gathered states and combine them for this rank (the one ``state_scan`` call site).

    causal: the exclusive decayed prefix (``reverse=False``, incoming state ``S_t``) or suffix
    (``reverse=True``, ``R_t``) at this rank. Non-causal: the sum over all ranks, which is the
    undecayed inclusive scan at the far end.
    """
    gathered = handle.wait()
    states = gathered.view((info.size, -1) + tuple(gathered.shape[1:]))
    h = states.shape[2]
    if causal and log_decay is not None:
        chunk_log_decay = log_decay.to(states.dtype) * seq_local
    else:
        chunk_log_decay = states.new_zeros(h)
    scanned = state_scan(states, chunk_log_decay, reverse)
    if causal:
        return scanned[info.rank]
    end = 0 if reverse else info.size - 1
    return scanned[end] + states[end]


class _LASP2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_decay, info, causal, scale, block, backend):
        qs = q * scale if scale != 1.0 else q
        kw = {"log_decay": log_decay, "block": block, "backend": backend}
        # one rank, causal: no incoming state, nothing to gather or add
        alone = causal and info.size == 1
        if causal:
            h, m = chunk_fwd_h(k, v, **kw)  # M_t is the last state of the chunked pass
        else:
            m = chunk_state(k, v)
        handle = None if alone else _gather_states(m, info)
        out = chunk_fwd_o(qs, k, v, h, **kw) if causal else None  # overlaps the gather
        s = None
        if not alone:
            s = _combine(handle, info, log_decay, q.shape[1], causal, reverse=False)
            inter = inter_chunk(qs, s, log_decay=log_decay if causal else None)
            out = inter if out is None else out.to(inter.dtype) + inter
        ctx.save_for_backward(q, k, v, s, log_decay)
        ctx.opts = (info, causal, scale, block, backend)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, s, log_decay = ctx.saved_tensors
        info, causal, scale, block, backend = ctx.opts
        qs = q * scale if scale != 1.0 else q
        do = dout.contiguous()
        kw = {"log_decay": log_decay, "block": block, "backend": backend}
        if causal:
            dh, g = chunk_bwd_dh(qs, do, **kw)  # G_t is the last value of the state-gradient pass
        else:
            g = state_grad(qs, do)
        handle = None if s is None else _gather_states(g, info)
        if causal:  # the intra-shard gradients overlap the gather
            h, _ = chunk_fwd_h(k, v, **kw)
            grads = chunk_bwd_dqkv(qs, k, v, do, h, dh, **kw)
        if s is not None:
            r = _combine(handle, info, log_decay, q.shape[1], causal, reverse=True)
            cross = inter_chunk_backward(do, k, v, s, r, log_decay=log_decay if causal else None)
            grads = cross if not causal else tuple(a.to(b.dtype) + b for a, b in zip(grads, cross))
        dq, dk, dv = grads
        dq = dq * scale  # the gradients above are w.r.t. the scaled q
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)) + (None,) * 6


def lasp2_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None,
                           decay: torch.Tensor | None = None, causal: bool = True, scale: float = 1.0,
                           block: int = 64, backend: str = "auto") -> torch.Tensor:
    """LASP-2 linear attention over a sequence sharded contiguously across ``group``.

    Causal: ``o_t = sum_{s<=t} lambda^(t-s) (q_t . k_s) v_s`` over the global sequence (``lambda = 1``
    without decay); non-causal: ``o_t = q_t sum_s k_s^T v_s``. No normaliser and no feature map (as in
    LASP-2): apply them to q/k before the call if the model uses them.

    Args:
        q, k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``: this rank's contiguous shard (rank r holds tokens
            ``[r*C, (r+1)*C)``; ``C`` the same on every rank; ``ok.shard_sequence(x)`` makes them).
        group: process group (``None``: the default group). Any world size >= 1.
        decay: ``None`` or a ``[H]`` tensor of log-decays ``<= 0`` (``lambda = exp(decay)``), the same on
            every rank; treated as a constant (no gradient). Causal only.
        causal: see above.
        scale: multiplies q.
        block: chunk size of the intra-shard computation (Triton rounds it to a power of two in
            [16, 64]); any value gives the same result up to rounding.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"torch"`` (chunked PyTorch, any dtype
            incl. fp64) or ``"triton"`` (chunked kernels; fp16/bf16/fp32; on CPU under
            ``TRITON_INTERPRET=1``). Exact at every token, diagonal included.
    Returns:
        ``[B, C, H, Dv]`` in ``q.dtype``; differentiable w.r.t. q, k, v.
    Communication: one AllGather of the ``[B, H, Dk, Dv]`` fp32 states in forward and one in backward
    (posted before the intra-shard compute, waited on after it): ``(N-1) B H Dk Dv 4`` bytes received
    per rank per pass, whatever the sequence length.
    Example (``torchrun --nproc-per-node 4``)::

        q, k, v = (ok.shard_sequence(t) for t in (q_full, k_full, v_full))   # [B, L/4, H, D]
        o = ok.lasp2_linear_attention(q, k, v, decay=torch.full((H,), -0.01, device="cuda"))
    """
    info = group_info(group)
    name = "lasp2_linear_attention"
    with rank_consistent(name, info) as check:
        for arg, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        decay_vals = None
        if isinstance(decay, torch.Tensor) and decay.dim() == 1 and decay.is_floating_point():
            decay_vals = tuple(decay.detach().double().cpu().tolist())  # must agree across ranks too
        check.meta(q=tuple(q.shape), k=tuple(k.shape), v=tuple(v.shape), dtype=str(q.dtype), device=q.device.type,
                   causal=bool(causal), scale=float(scale), decay=decay_vals, block=block, backend=backend)
        for arg, t in (("q", q), ("k", k), ("v", v)):
            if t.dim() != 4:
                raise ValueError(f"{name}: {arg} must be [batch, seq_local, heads, head_dim], got shape "
                                 f"{tuple(t.shape)}")
        if q.shape != k.shape:
            raise ValueError(f"{name}: q and k must have the same shape [batch, seq_local, heads, head_dim], got "
                             f"{tuple(q.shape)} and {tuple(k.shape)}")
        if v.shape[:3] != q.shape[:3]:
            raise ValueError(f"{name}: v must be [batch, seq_local, heads, head_dim_v] = {tuple(q.shape[:3])} + "
                             f"[head_dim_v], got {tuple(v.shape)}")
        if q.shape[1] < 1:
            raise ValueError(f"{name}: seq_local must be >= 1, got {q.shape[1]}")
        if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
            raise TypeError(f"{name}: q, k, v must share a floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        if backend not in BACKENDS:
            raise ValueError(f"{name}: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton" and q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name}: backend='triton' takes float16/bfloat16/float32, got {q.dtype} "
                            "(use backend='torch')")
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"{name}: block must be an int >= 1, got {block!r}")
        if decay is not None:
            if not causal:
                raise ValueError(f"{name}: decay needs causal=True (got causal=False with a decay)")
            if decay_vals is None or len(decay_vals) != q.shape[2]:
                raise ValueError(f"{name}: decay must be a [heads] = [{q.shape[2]}] floating tensor of log-decays, "
                                 f"got {tuple(decay.shape) if isinstance(decay, torch.Tensor) else decay!r}")
            bad = [x for x in decay_vals if not (x <= 0.0 and x > float("-inf"))]
            if bad:
                raise ValueError(f"{name}: decay holds log-decays, which must be finite and <= 0, got "
                                 f"{bad[0]:.4g}")
    log_decay = None if decay is None else decay.detach().to(device=q.device, dtype=acc_dtype(q.dtype))
    return _LASP2.apply(q, k, v, log_decay, info, bool(causal), float(scale), int(block), resolve(backend, q))


def lasp2_comm_bytes(world: int, batch: int, heads: int, dk: int, dv: int, elem_bytes: int = 4) -> dict:
    """Closed-form bytes received per rank (ledger kind ``all_gather``) by :func:`lasp2_linear_attention`.

    Args:
        world: ranks N; batch, heads, dk, dv: the shapes; elem_bytes: the inputs' element size (the
            states are fp32, fp64 only for fp64 inputs).
    Returns:
        ``{"forward": (N-1) B H Dk Dv 4, "backward": same}`` (8 instead of 4 for fp64 inputs).
    Example:
        >>> lasp2_comm_bytes(4, 1, 16, 128, 128)["forward"]
        3145728
    """
    acc = 8 if elem_bytes == 8 else 4
    per = (world - 1) * batch * heads * dk * dv * acc
    return {"forward": per, "backward": per}
