"""LASP-2: sequence-parallel linear attention with one AllGather of d x d states per pass.

Rank ``t`` of ``N`` holds ``C`` consecutive tokens. Per (batch, head), with ``G_i`` the inclusive
cumulative log-decay inside the shard (from the per-token ``g`` and/or the per-head ``g_gamma``;
``G = 0`` without decay), ``a_t = exp(G_(C-1))`` the decay across the whole shard and ``i``/``s``
positions in the shard:

Forward. The shard's own state ``M_t = sum_s exp(G_(C-1) - G_s) k_s^T v_s`` ([B, H, Dk, Dv], fp32)
comes out of the first chunked pass (:func:`~..kernels.linear_attention.chunk_fwd_h`); its AllGather
is posted at once (with per-token ``g``, ``log a_t`` [B, H] rides in the same buffer: one extra
float per (batch, head)) and the intra-shard output
(:func:`~..kernels.linear_attention.chunk_fwd_o`) runs while it is in flight. The incoming state is
the exclusive prefix ``S_(t+1) = a_t S_t + M_t``, ``S_0 = 0`` (``state_scan(.., reverse=False)``)
and ``o_i += exp(G_i) q_i S_t``.

Backward, derived from the forward. ``S_j`` enters shard ``j``'s output only through
``exp(G_i) q_i S_j``, so ``dL/dS_j = G_j = sum_{i in j} exp(G_i) q_i^T dO_i``: a local quantity, the
last value of the state-gradient pass (:func:`~..kernels.linear_attention.chunk_bwd_dh`),
all-gathered as soon as it is known. ``M_t`` enters every later ``S_j``, hence
``R_t = dL/dM_t = dL/dS_(t+1)``: the exclusive suffix ``R_(t-1) = a_t R_t + G_t`` with the *same*
per-rank decays (known from the forward: no second exchange of them),
``state_scan(.., reverse=True)``. Through ``M_t``: ``dk_s += exp(G_(C-1) - G_s) v_s R_t^T`` and
``dv_s += exp(G_(C-1) - G_s) k_s R_t``; through the output term: ``dq_i += exp(G_i) dO_i S_t^T``
(:func:`~..kernels.linear_attention.inter_chunk_backward`). The intra-shard gradients
(:func:`~..kernels.linear_attention.chunk_bwd_dqkv`) run while the gather is in flight. The decay
gradient needs no communication: ``dL/dG_i = q_i . dq_i - k_i . dk_i`` plus, at the shard's last
token, ``<R_t, M_t + a_t S_t>`` (the states leaving the shard); ``dg_s = sum_{i>=s} dL/dG_i`` and
``dg_gamma = sum_{b,s} dg`` (:func:`~..kernels.linear_attention.reference.decay_grad`).

Non-causal (no decay): ``O_t = Q_t sum_j M_j`` with ``M_j = K_j^T V_j``; backward ``R = sum_j G_j``
with ``G_j = Q_j^T dO_j``, ``dQ = dO (sum_j M_j)^T``, ``dK = V R^T``, ``dV = K R``. The sums are the
inclusive scans at the far end, so every combination goes through :func:`_combine`, the one call of
:func:`~..kernels.linear_attention.state_scan`.

Bytes received per rank (ledger kind ``all_gather``), forward and backward each:
``(N-1) * B * H * Dk * Dv * 4`` (8 for fp64 inputs, whose states stay fp64), independent of ``C``;
with per-token ``g`` the forward gathers ``(N-1) * B * H * (Dk * Dv + 1)`` elements.
"""
from __future__ import annotations

import math

import torch

from .._host import host_values
from .._util import acc_dtype
from ..comm import all_gather_async, get_validation, group_info, rank_consistent
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
from ..kernels.linear_attention.reference import decay_grad, shard_cumsum


def _gather_states(m: torch.Tensor, info):
    """Post the pass's single AllGather of ``m [B, H, ...]``; ``wait()`` gives ``[N * B, H, ...]``."""
    out = m.new_empty((info.size * m.shape[0],) + tuple(m.shape[1:]))
    return all_gather_async(out, m.contiguous(), group=info)


def _combine(handle, info, chunk_decay, causal: bool, reverse: bool, shape):
    """Wait for the gathered states and combine them for this rank (the one ``state_scan`` call site).

    ``chunk_decay``: ``None``, ``[H]`` (the same decay across every shard) or ``"gathered"`` (the
    last element of every gathered ``[B, H, Dk*Dv + 1]`` row is the shard's log-decay). Returns the
    combined state ``[B, H, Dk, Dv]`` and the per-rank decays ``[N, B, H]`` (``None`` unless
    gathered). causal: the exclusive prefix (``reverse=False``, incoming state ``S_t``) or suffix
    (``reverse=True``, ``R_t``) at this rank. Non-causal: the sum over all ranks, which is the
    undecayed inclusive scan at the far end.
    """
    gathered = handle.wait()
    b, h, dk, dv = shape
    gathered = gathered.view(info.size, b, h, -1)
    rank_decay = None
    if isinstance(chunk_decay, str):
        rank_decay = gathered[..., -1]
        chunk_decay = rank_decay
        gathered = gathered[..., :-1]
    states = gathered.reshape(info.size, b, h, dk, dv)
    scanned = state_scan(states, chunk_decay if causal else None, reverse)
    if causal:
        return scanned[info.rank], rank_decay
    end = 0 if reverse else info.size - 1
    return scanned[end] + states[end], None


def _suffix(handle, info, rank_decay, chunk_decay, causal, shape):
    """The backward's combination: like :func:`_combine` (``reverse=True``) with the forward's decays."""
    gathered = handle.wait()
    states = gathered.view((info.size,) + tuple(shape))
    decay = rank_decay if rank_decay is not None else chunk_decay
    scanned = state_scan(states, decay if causal else None, True)
    if causal:
        return scanned[info.rank]
    return scanned[0] + states[0]


class _LASP2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, g_gamma, info, causal, scale, block, backend):
        b, c, nh, dk = q.shape
        dv = v.shape[-1]
        ctx.opts = (info, causal, scale, block, backend, g is not None, g_gamma is not None)
        if q.numel() == 0 or v.numel() == 0:  # batch 0 or an empty shard everywhere: nothing to do or send
            ctx.empty = True
            ctx.save_for_backward(q, k, v, g, g_gamma)
            return q.new_zeros(b, c, nh, dv)
        ctx.empty = False
        acc = acc_dtype(q.dtype)
        qs = q * scale if scale != 1.0 else q
        kw = {"g": g, "g_gamma": g_gamma, "block": block, "backend": backend}
        # the inclusive cumulative log-decay over the shard, for the cross-shard terms
        big_g = shard_cumsum(g, g_gamma, b, c, nh, acc, q.device) if causal else None
        # one rank, causal: no incoming state, nothing to gather or add
        alone = causal and info.size == 1
        if causal:
            h, m = chunk_fwd_h(k, v, **kw)  # M_t is the last state of the chunked pass
        else:
            m = chunk_state(k, v)
        handle, chunk_decay = None, None
        if not alone:
            payload = m
            if g is not None:  # per-token decay: the shard's log-decay rides with the state
                chunk_decay = "gathered"
                payload = torch.cat([m.reshape(b, nh, dk * dv), big_g[:, -1].to(m.dtype).unsqueeze(-1)], -1)
            elif g_gamma is not None:
                chunk_decay = g_gamma.to(m.dtype) * c
            handle = _gather_states(payload, info)
        out = chunk_fwd_o(qs, k, v, h, **kw) if causal else None  # overlaps the gather
        s = rank_decay = None
        if not alone:
            s, rank_decay = _combine(handle, info, chunk_decay, causal, False, (b, nh, dk, dv))
            inter = inter_chunk(qs, s, big_g=big_g)
            out = inter if out is None else out.to(inter.dtype) + inter
        keep_m = m if (g is not None or g_gamma is not None) and not alone else None
        ctx.save_for_backward(q, k, v, g, g_gamma, s, keep_m, rank_decay)
        ctx.chunk_decay = None if isinstance(chunk_decay, str) else chunk_decay
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        info, causal, scale, block, backend, has_g, has_gamma = ctx.opts
        if ctx.empty:
            q, k, v, g, g_gamma = ctx.saved_tensors
            return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
                    None if g is None else torch.zeros_like(g), None if g_gamma is None else torch.zeros_like(g_gamma)) \
                + (None,) * 5
        q, k, v, g, g_gamma, s, m, rank_decay = ctx.saved_tensors
        b, c, nh, dk = q.shape
        dv = v.shape[-1]
        qs = q * scale if scale != 1.0 else q
        do = dout.contiguous()
        kw = {"g": g, "g_gamma": g_gamma, "block": block, "backend": backend}
        if causal:
            dh, gq = chunk_bwd_dh(qs, do, **kw)  # G_t is the last value of the state-gradient pass
        else:
            gq = state_grad(qs, do)
        handle = None if s is None else _gather_states(gq, info)
        if causal:  # the intra-shard gradients overlap the gather
            h, _ = chunk_fwd_h(k, v, **kw)
            grads = chunk_bwd_dqkv(qs, k, v, do, h, dh, **kw)
        big_g = shard_cumsum(g, g_gamma, b, c, nh, acc_dtype(q.dtype), q.device) if causal else None
        r = None
        if s is not None:
            r = _suffix(handle, info, rank_decay, ctx.chunk_decay, causal, (b, nh, dk, dv))
            cross = inter_chunk_backward(do, k, v, s, r, big_g=big_g)
            grads = cross if not causal else tuple(x.to(y.dtype) + y for x, y in zip(grads, cross))
        dqs, dk_, dv_ = grads
        dg = dgg = None
        if (has_g and ctx.needs_input_grad[3]) or (has_gamma and ctx.needs_input_grad[4]):
            last = None
            if r is not None:  # <R_t, M_t + a_t S_t>: the states leaving the shard
                a = torch.exp(big_g[:, -1]).to(s.dtype)[..., None, None]
                last = (r * (m.to(s.dtype) + a * s)).sum((-2, -1))
            full = decay_grad(qs, dqs, k, dk_, last)
            dg = full.to(g.dtype) if has_g else None
            dgg = full.sum((0, 1)).to(g_gamma.dtype) if has_gamma else None
        dq = dqs * scale  # the gradients above are w.r.t. the scaled q
        return (dq.to(q.dtype), dk_.to(k.dtype), dv_.to(v.dtype), dg, dgg) + (None,) * 5


def _decay_values(name: str, t, arg: str, want_shape: tuple, what: str, values=None) -> None:
    """Check a decay tensor's shape and values (finite, <= 0). ``values``: its host-side values when the
    caller has them (``g_gamma``, read once per tensor version); otherwise a CPU tensor is checked
    directly and a CUDA tensor's values are not read (that would synchronise the host every call)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or tuple(t.shape) != want_shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else t
        raise ValueError(f"{name}: {arg} must be a {what} = {list(want_shape)} floating tensor of log-decays, "
                         f"got {got!r}" + (f" ({t.dtype})" if isinstance(t, torch.Tensor) else ""))
    if t.numel() == 0:
        return
    if values is not None:
        bad = [x for x in values if not (math.isfinite(x) and x <= 0)]
        first = bad[0] if bad else None
    elif t.is_cuda:
        return
    else:
        td = t.detach()
        badt = ~(torch.isfinite(td) & (td <= 0))
        first = td[badt].flatten()[0].item() if bool(badt.any()) else None
    if first is not None:
        raise ValueError(f"{name}: {arg} holds log-decays, which must be finite and <= 0, got {first:.4g}")


def lasp2_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, g: torch.Tensor | None = None,
                           g_gamma: torch.Tensor | None = None, scale: float | None = None, causal: bool = True,
                           group=None, block: int = 64, backend: str = "auto") -> torch.Tensor:
    """LASP-2 linear attention over a sequence sharded contiguously across ``group``.

    Causal: ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s`` over the global sequence, with
    ``G_t = sum_{t'<=t} (g[t'] + g_gamma)`` the cumulative log-decay (0 without decay; ``g_gamma``
    alone: ``lambda^(t-s)``, ``lambda = exp(g_gamma)``); non-causal: ``o_t = q_t sum_s k_s^T v_s``. No
    normaliser and no feature map (as in LASP-2): apply them to q/k before the call if the model uses
    them. Names as in flash-linear-attention's ``chunk_simple_gla``.

    Args:
        q, k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``: this rank's contiguous shard (rank r holds tokens
            ``[r*C, (r+1)*C)``; ``C`` the same on every rank, 0 allowed; ``ok.shard_sequence(x)``).
        g: ``None`` or ``[B, C, H]``: per-token log-decays ``<= 0`` of this shard (GLA / simple-GLA /
            Mamba-2 style, e.g. ``F.logsigmoid(x @ w)``). Causal only. Differentiable.
        g_gamma: ``None`` or ``[H]``: per-head constant log-decays ``<= 0``, the same on every rank
            (checked). Causal only. Differentiable: each rank's ``g_gamma.grad`` is its shard's
            contribution; sum it over the group like any replicated parameter.
        scale: multiplies q; ``None``: ``Dk ** -0.5`` (fla's default).
        causal: see above.
        group: process group (``None``: the default group). Any world size >= 1.
        block: chunk size of the torch backend (the Triton backend takes its chunk from the
            launch-config table); any value gives the same result up to rounding.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"torch"`` (chunked PyTorch, any dtype
            incl. fp64) or ``"triton"`` (chunked kernels; fp16/bf16/fp32; on CPU under
            ``TRITON_INTERPRET=1``). Exact at every token, diagonal included.
    Returns:
        ``[B, C, H, Dv]`` in ``q.dtype``; differentiable w.r.t. q, k, v, g and g_gamma.
    Communication: one AllGather of the ``[B, H, Dk, Dv]`` fp32 states in forward and one in backward
    (posted before the intra-shard compute, waited on after it): ``(N-1) B H Dk Dv 4`` bytes received
    per rank per pass, whatever the sequence length (with ``g``: ``(N-1) B H (Dk Dv + 1) 4`` in the
    forward). Batch 0 or ``C = 0`` communicate nothing and give empty outputs and gradients.
    Example (``torchrun --nproc-per-node 4``)::

        q, k, v = (ok.shard_sequence(t) for t in (q_full, k_full, v_full))   # [B, L/4, H, D]
        g = ok.shard_sequence(F.logsigmoid(gate_logits))                     # [B, L/4, H]
        o = ok.lasp2_linear_attention(q, k, v, g=g)
        o = ok.lasp2_linear_attention(q, k, v, g_gamma=torch.full((H,), -0.01, device="cuda"))
    """
    info = group_info(group)
    name = "lasp2_linear_attention"
    with rank_consistent(name, info) as check:
        for arg, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        gamma_vals = None
        if (isinstance(g_gamma, torch.Tensor) and g_gamma.dim() == 1 and g_gamma.is_floating_point()
                and (not g_gamma.is_cuda or get_validation() == "full")):
            # checked (range) and, on several ranks, digested (must agree across ranks). A CUDA g_gamma is
            # read back once per tensor version ("full" validation only): later calls do not synchronise.
            gamma_vals = tuple(float(x) for x in host_values(g_gamma))
        g_meta = (tuple(g.shape), str(g.dtype)) if isinstance(g, torch.Tensor) else g
        check.meta(q=tuple(q.shape), k=tuple(k.shape), v=tuple(v.shape), dtype=str(q.dtype), device=q.device.type,
                   causal=bool(causal), scale=None if scale is None else float(scale),
                   g_gamma=gamma_vals if info.size > 1 else None,
                   g=repr(g_meta), block=block, backend=backend)
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
        if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
            raise TypeError(f"{name}: q, k, v must share a floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        if backend not in BACKENDS:
            raise ValueError(f"{name}: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton" and q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name}: backend='triton' takes float16/bfloat16/float32, got {q.dtype} "
                            "(use backend='torch')")
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"{name}: block must be an int >= 1, got {block!r}")
        if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise ValueError(f"{name}: scale must be a finite number or None, got {scale!r}")
        for arg, t, shape, what in (("g", g, tuple(q.shape[:3]), "[batch, seq_local, heads]"),
                                    ("g_gamma", g_gamma, tuple(q.shape[2:3]), "[heads]")):
            if t is None:
                continue
            if not causal:
                raise ValueError(f"{name}: {arg} (a decay) needs causal=True (got causal=False with {arg})")
            _decay_values(name, t, arg, shape, what, values=gamma_vals if arg == "g_gamma" else None)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    acc = acc_dtype(q.dtype)
    # the decays as the kernels take them (the accumulator dtype); autograd goes through the casts
    g_in = None if g is None else g.to(device=q.device, dtype=acc)
    gg_in = None if g_gamma is None else g_gamma.to(device=q.device, dtype=acc)
    return _LASP2.apply(q, k, v, g_in, gg_in, info, bool(causal), scale, int(block), resolve(backend, q))


def lasp2_comm_bytes(world: int, batch: int, heads: int, dk: int, dv: int, elem_bytes: int = 4, *,
                     per_token_decay: bool = False) -> dict:
    """Closed-form bytes received per rank (ledger kind ``all_gather``) by :func:`lasp2_linear_attention`.

    Args:
        world: ranks N; batch, heads, dk, dv: the shapes; elem_bytes: the inputs' element size (the
            states are fp32, fp64 only for fp64 inputs); per_token_decay: a ``g`` was passed.
    Returns:
        ``{"forward": (N-1) B H Dk Dv 4, "backward": same}`` (8 instead of 4 for fp64 inputs; with
        ``per_token_decay`` the forward moves ``(N-1) B H (Dk Dv + 1)`` elements).
    Example:
        >>> lasp2_comm_bytes(4, 1, 16, 128, 128)["forward"]
        3145728
    """
    acc = 8 if elem_bytes == 8 else 4
    per = (world - 1) * batch * heads * dk * dv * acc
    fwd = per + (world - 1) * batch * heads * acc if per_token_decay else per
    return {"forward": fwd, "backward": per}
