"""Linear attention (LASP-2's form: no normaliser, optional per-head decay), local compute only.

Semantics over a sequence ``[B, L, H, D]`` (``scale`` multiplies q), causal:
``o_t = sum_{s<=t} lambda_h^(t-s) (q_t . k_s) v_s`` with ``lambda_h = exp(log_decay[h])`` (1 without
decay); non-causal: ``o_t = q_t sum_s k_s^T v_s``.

- :func:`linear_attention_ref`: the O(L^2) formula, the oracle of the tests (any dtype, float64).
- :func:`chunk_state`: a shard's final state from zero, ``M = sum_s lambda^(C-1-s) k_s^T v_s``.
- :func:`intra_chunk`: the shard's own (causal, decayed) contribution, computed in blocks of
  ``block`` tokens with a running state, so memory is O(C * block), not O(C^2).
- :func:`inter_chunk`: the contribution of an incoming state ``S``: ``lambda^(i+1) q_i S``.
All are differentiable torch ops, accumulating in fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _powers(log_decay, n: int, start: int, device, dtype):
    """``lambda^(start + i)`` for i in [0, n): ``[H, n]`` (None without decay)."""
    if log_decay is None:
        return None
    e = torch.arange(start, start + n, device=device, dtype=dtype)
    return torch.exp(log_decay.to(dtype).view(-1, 1) * e.view(1, -1))


def linear_attention_ref(q, k, v, *, log_decay=None, causal=True, scale=1.0):
    """``[B, L, H, Dk]``, ``[B, L, H, Dk]``, ``[B, L, H, Dv]`` -> ``[B, L, H, Dv]`` by the O(L^2) formula."""
    acc = acc_dtype(q.dtype)
    qf, kf, vf = (t.to(acc) for t in (q, k, v))
    s = torch.einsum("bihd,bjhd->bhij", qf * scale, kf)
    L = q.shape[1]
    if causal:
        i = torch.arange(L, device=q.device)
        dist = (i.view(-1, 1) - i.view(1, -1)).to(acc)  # t - s
        w = (dist >= 0).to(acc)
        if log_decay is not None:
            w = w * torch.exp(log_decay.to(acc).view(-1, 1, 1) * dist.clamp_min(0))  # [H, L, L]
        s = s * w
    return torch.einsum("bhij,bjhd->bihd", s, vf).to(q.dtype)


def chunk_state(k, v, log_decay=None) -> torch.Tensor:
    """The shard's final state from zero: ``[B, H, Dk, Dv]`` (accumulator dtype)."""
    acc = acc_dtype(k.dtype)
    kf, vf = k.to(acc), v.to(acc)
    c = k.shape[1]
    p = _powers(log_decay, c, 0, k.device, acc)
    if p is not None:  # lambda^(C-1-s)
        kf = kf * p.flip(-1).t().unsqueeze(0).unsqueeze(-1)
    return torch.einsum("bshk,bshv->bhkv", kf, vf)


def intra_chunk(q, k, v, *, log_decay=None, block: int = 64) -> torch.Tensor:
    """Causal decayed attention inside the shard, ``[B, C, H, Dv]`` (accumulator dtype)."""
    acc = acc_dtype(q.dtype)
    b, c, h, dk = q.shape
    dv = v.shape[-1]
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    state = torch.zeros(b, h, dk, dv, dtype=acc, device=q.device)
    outs = []
    for s0 in range(0, c, block):
        n = min(block, c - s0)
        qb, kb, vb = qf[:, s0:s0 + n], kf[:, s0:s0 + n], vf[:, s0:s0 + n]
        i = torch.arange(n, device=q.device)
        dist = (i.view(-1, 1) - i.view(1, -1)).to(acc)
        w = (dist >= 0).to(acc)
        if log_decay is not None:
            w = w * torch.exp(log_decay.to(acc).view(-1, 1, 1) * dist.clamp_min(0))
        o = torch.einsum("bhij,bjhd->bihd", torch.einsum("bihd,bjhd->bhij", qb, kb) * w, vb)
        if s0:
            o = o + inter_chunk(qb, state, log_decay=log_decay)
        outs.append(o)
        if s0 + n < c:  # carry the running state to the next block
            blk_decay = _powers(log_decay, 1, n, q.device, acc)
            state = (state if blk_decay is None else state * blk_decay.view(1, h, 1, 1)) + \
                chunk_state(kb, vb, log_decay)
    return torch.cat(outs, dim=1)


def inter_chunk(q, state, *, log_decay=None) -> torch.Tensor:
    """``lambda^(i+1) q_i S`` for an incoming state ``S [B, H, Dk, Dv]``: ``[B, C, H, Dv]``."""
    acc = state.dtype
    o = torch.einsum("bihk,bhkv->bihv", q.to(acc), state)
    p = _powers(log_decay, q.shape[1], 1, q.device, acc)
    return o if p is None else o * p.t().unsqueeze(0).unsqueeze(-1)


def _row_weights(log_decay, n: int, start: int, device, dtype, reverse: bool = False):
    """``lambda^(start + i)`` (or, ``reverse``, ``lambda^(start + n-1-i)``) as ``[1, n, H, 1]``."""
    p = _powers(log_decay, n, start, device, dtype)
    if p is None:
        return None
    return (p.flip(-1) if reverse else p).t().unsqueeze(0).unsqueeze(-1)


def state_grad(q, dout, *, log_decay=None) -> torch.Tensor:
    """Gradient of the loss w.r.t. the incoming state of :func:`inter_chunk`:
    ``G = sum_i lambda^(i+1) q_i^T dO_i``, ``[B, H, Dk, Dv]`` (``dout``'s dtype)."""
    w = _row_weights(log_decay, q.shape[1], 1, q.device, dout.dtype)
    qw = q.to(dout.dtype) if w is None else q.to(dout.dtype) * w
    return torch.einsum("bihk,bihv->bhkv", qw, dout)


def inter_chunk_backward(dout, k, v, state, state_grad_in, *, log_decay=None):
    """Gradients of the cross-shard terms, given the incoming state ``S`` and the gradient ``R``
    arriving for this shard's own state: ``dq = lambda^(i+1) dO_i S^T`` (w.r.t. the scaled q),
    ``dk = lambda^(C-1-s) v_s R^T``, ``dv = lambda^(C-1-s) k_s R``, in ``state``'s dtype."""
    acc, c = state.dtype, k.shape[1]
    dq = torch.einsum("bihv,bhkv->bihk", dout.to(acc), state)
    dk = torch.einsum("bihv,bhkv->bihk", v.to(acc), state_grad_in)
    dv = torch.einsum("bihk,bhkv->bihv", k.to(acc), state_grad_in)
    wq = _row_weights(log_decay, c, 1, k.device, acc)
    wk = _row_weights(log_decay, c, 0, k.device, acc, reverse=True)
    if wq is not None:
        dq, dk, dv = dq * wq, dk * wk, dv * wk
    return dq, dk, dv


def intra_chunk_backward(q, k, v, dout, *, log_decay=None, block: int = 64):
    """Gradients of :func:`intra_chunk` (recomputed in blocks) w.r.t. ``q, k, v``, accumulator dtype."""
    with torch.enable_grad():
        qi, ki, vi = (t.detach().requires_grad_(True) for t in (q, k, v))
        o = intra_chunk(qi, ki, vi, log_decay=log_decay, block=block)
        grads = torch.autograd.grad(o, (qi, ki, vi), dout.to(o.dtype))
    return tuple(g.to(o.dtype) for g in grads)
