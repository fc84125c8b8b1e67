"""Linear attention (LASP-2's form: no normaliser, optional per-head decay): the O(L^2) oracle and
the chunked pure-PyTorch path. Local compute only.

Semantics over a sequence ``[B, L, H, D]`` (``scale`` multiplies q), causal:
``o_t = sum_{s<=t} lambda_h^(t-s) (q_t . k_s) v_s`` with ``lambda_h = exp(log_decay[h])`` (1 without
decay); non-causal: ``o_t = q_t sum_s k_s^T v_s``.

The chunked form (the same decomposition as the Triton kernels, so each kernel has a torch twin to
be checked against): the shard is cut into chunks of ``bt`` tokens (the last one may be shorter,
``n_u`` tokens). With ``i``/``s`` the position of a query/key inside its chunk,

- ``S_u = lambda^(n_u) S_(u-1) + sum_s lambda^(n_u-1-s) k_s^T v_s`` is the state after chunk ``u``
  (``S_(-1) = 0``); :func:`chunk_fwd_h_torch` returns every ``h_u = S_(u-1)`` and the final ``S``,
  which is the shard's own state ``M`` that LASP-2 all-gathers;
- ``o_i = lambda^(i+1) q_i h_u + sum_{s<=i} lambda^(i-s) (q_i . k_s) v_s`` (:func:`chunk_fwd_o_torch`;
  the diagonal ``s = i`` included);
- backward: ``dh_u = dL/dS_u`` runs backwards in time,
  ``dL/dS_(u-1) = lambda^(n_u) dh_u + sum_i lambda^(i+1) q_i^T dO_i`` (:func:`chunk_bwd_dh_torch`);
  its last value ``dL/dS_(-1) = sum_i lambda^(i+1) q_i^T dO_i`` (shard positions) is the gradient of
  an incoming state, the ``G`` that LASP-2's backward all-gathers;
- ``dq_i = lambda^(i+1) dO_i h_u^T + sum_{s<=i} lambda^(i-s) (dO_i . v_s) k_s``,
  ``dk_s = lambda^(n_u-1-s) v_s dh_u^T + sum_{i>=s} lambda^(i-s) (dO_i . v_s) q_i``,
  ``dv_s = lambda^(n_u-1-s) k_s dh_u + sum_{i>=s} lambda^(i-s) (q_i . k_s) dO_i``
  (:func:`chunk_bwd_dqkv_torch`).

The cross-shard pieces LASP-2 adds around them (:func:`inter_chunk`, :func:`inter_chunk_backward`,
:func:`chunk_state`, :func:`state_grad`) use positions in the whole shard. Everything accumulates in
fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulator dtype of an input dtype: fp64 stays fp64, everything else is fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def linear_attention_ref(q, k, v, *, log_decay=None, causal=True, scale=1.0):
    """The O(L^2) formula: the oracle of the tests.

    Args:
        q, k: ``[B, L, H, Dk]``; v: ``[B, L, H, Dv]`` (any floating dtype; float64 for tests).
        log_decay: ``None`` or ``[H]`` log-decays ``<= 0`` (causal only).
        causal: ``o_t = sum_{s<=t} lambda^(t-s) (q_t . k_s) v_s``; else ``o_t = q_t sum_s k_s^T v_s``.
        scale: multiplies q.
    Returns:
        ``[B, L, H, Dv]`` in ``q.dtype`` (differentiable w.r.t. q, k, v).
    Example:
        >>> o = linear_attention_ref(q, k, v, log_decay=torch.full((H,), -0.05, dtype=torch.float64))
    """
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


# ----------------------------------------------------------------------------------- chunked torch path

def _chunks(x: torch.Tensor, bt: int) -> torch.Tensor:
    """``[B, C, H, D]`` -> ``[B, H, NT, bt, D]`` in the accumulator dtype, zero-padded past ``C``."""
    b, c, h, d = x.shape
    nt = -(-c // bt)
    x = x.to(acc_dtype(x.dtype))
    if nt * bt != c:
        x = F.pad(x, (0, 0, 0, 0, 0, nt * bt - c))
    return x.view(b, nt, bt, h, d).permute(0, 3, 1, 2, 4)


def _unchunk(x: torch.Tensor, c: int) -> torch.Tensor:
    """``[B, H, NT, bt, D]`` -> ``[B, C, H, D]``."""
    b, h, nt, bt, d = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, nt * bt, h, d)[:, :c]


def _weights(log_decay, h: int, c: int, bt: int, dtype, device):
    """Decay weights of the chunked form (all ones without decay).

    Returns ``wq [H, 1, bt]`` = ``lambda^(i+1)``, ``wk [H, NT, bt]`` = ``lambda^(n_u-1-s)`` (0 past
    the end of the shard), ``dmat [H, bt, bt]`` = ``lambda^(i-s)`` for ``s <= i`` else 0 (the causal
    mask, diagonal included) and ``chunk [H, NT]`` = ``lambda^(n_u)``.
    """
    nt = -(-c // bt)
    ld = torch.zeros(h, dtype=dtype, device=device) if log_decay is None else log_decay.to(device, dtype)
    ld = ld.view(h, 1, 1)
    pos = torch.arange(bt, device=device, dtype=dtype)
    n = torch.clamp(c - bt * torch.arange(nt, device=device, dtype=dtype), max=bt).view(1, nt, 1)  # n_u
    wq = torch.exp(ld * (pos + 1)).view(h, 1, bt)
    # masked before exp: past the end n_u-1-s < 0 would overflow for strong decays
    wk = torch.where(pos < n, torch.exp(ld * (n - 1 - pos).clamp_min(0)), torch.zeros((), dtype=dtype, device=device))
    dist = pos.view(-1, 1) - pos.view(1, -1)  # i - s
    dmat = torch.where(dist >= 0, torch.exp(ld * dist.clamp_min(0)), torch.zeros((), dtype=dtype, device=device))
    chunk = torch.exp(ld.view(h, 1) * n.view(1, nt))
    return wq, wk, dmat, chunk


def chunk_fwd_h_torch(k, v, *, log_decay=None, bt: int = 64):
    """States entering every chunk and the shard's final state (torch twin of the Triton kernel).

    Args:
        k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``; log_decay: ``None`` or ``[H]``; bt: chunk size.
    Returns:
        ``h [B, H, NT, Dk, Dv]`` (``h[:, :, u] = S_(u-1)``) and ``final [B, H, Dk, Dv]`` (``= M``), in
        the accumulator dtype.
    """
    c, nh = k.shape[1], k.shape[2]
    kc, vc = _chunks(k, bt), _chunks(v, bt)
    _, wk, _, chunk = _weights(log_decay, nh, c, bt, kc.dtype, k.device)
    local = torch.einsum("bhusk,bhusv->bhukv", kc * wk.unsqueeze(-1), vc)  # [B, H, NT, Dk, Dv]
    run = torch.zeros_like(local[:, :, 0])
    hs = []
    for u in range(local.shape[2]):
        hs.append(run)
        run = run * chunk[:, u].view(1, nh, 1, 1) + local[:, :, u]
    return torch.stack(hs, dim=2), run


def chunk_fwd_o_torch(q, k, v, h, *, log_decay=None, bt: int = 64) -> torch.Tensor:
    """Shard-local causal output from the chunk states ``h`` of :func:`chunk_fwd_h_torch`:
    ``[B, C, H, Dv]`` in the accumulator dtype."""
    c, nh = q.shape[1], q.shape[2]
    qc, kc, vc = _chunks(q, bt), _chunks(k, bt), _chunks(v, bt)
    wq, _, dmat, _ = _weights(log_decay, nh, c, bt, qc.dtype, q.device)
    a = torch.einsum("bhuik,bhusk->bhuis", qc, kc) * dmat.unsqueeze(1)  # [B, H, NT, bt, bt]
    o = torch.einsum("bhuis,bhusv->bhuiv", a, vc)
    o = o + torch.einsum("bhuik,bhukv->bhuiv", qc * wq.unsqueeze(-1), h.to(qc.dtype))
    return _unchunk(o, c)


def chunk_bwd_dh_torch(q, do, *, log_decay=None, bt: int = 64):
    """Gradients of the chunk states, backwards in time (torch twin of the Triton kernel).

    Returns:
        ``dh [B, H, NT, Dk, Dv]`` (``dh[:, :, u] = dL/dS_u`` from the later chunks of the shard) and
        ``g [B, H, Dk, Dv]`` ``= sum_i lambda^(i+1) q_i^T dO_i`` (the gradient of an incoming state).
    """
    c, nh = q.shape[1], q.shape[2]
    qc, doc = _chunks(q, bt), _chunks(do, bt)
    wq, _, _, chunk = _weights(log_decay, nh, c, bt, qc.dtype, q.device)
    local = torch.einsum("bhuik,bhuiv->bhukv", qc * wq.unsqueeze(-1), doc)
    run = torch.zeros_like(local[:, :, 0])
    dhs = []
    for u in range(local.shape[2] - 1, -1, -1):
        dhs.append(run)
        run = run * chunk[:, u].view(1, nh, 1, 1) + local[:, :, u]
    return torch.stack(dhs[::-1], dim=2), run


def chunk_bwd_dqkv_torch(q, k, v, do, h, dh, *, log_decay=None, bt: int = 64):
    """Gradients of the shard-local causal output w.r.t. ``q, k, v`` from ``h`` and ``dh``:
    ``[B, C, H, D*]`` each, in the accumulator dtype."""
    c, nh = q.shape[1], q.shape[2]
    qc, kc, vc, doc = (_chunks(t, bt) for t in (q, k, v, do))
    wq, wk, dmat, _ = _weights(log_decay, nh, c, bt, qc.dtype, q.device)
    h, dh = h.to(qc.dtype), dh.to(qc.dtype)
    dmat = dmat.unsqueeze(1)
    ds = torch.einsum("bhuiv,bhusv->bhuis", doc, vc) * dmat  # dL/d(q_i . k_s)
    a = torch.einsum("bhuik,bhusk->bhuis", qc, kc) * dmat
    dq = torch.einsum("bhuis,bhusk->bhuik", ds, kc) + torch.einsum("bhuiv,bhukv->bhuik", doc, h) * wq.unsqueeze(-1)
    dk = torch.einsum("bhuis,bhuik->bhusk", ds, qc) + torch.einsum("bhusv,bhukv->bhusk", vc, dh) * wk.unsqueeze(-1)
    dv = torch.einsum("bhuis,bhuiv->bhusv", a, doc) + torch.einsum("bhusk,bhukv->bhusv", kc, dh) * wk.unsqueeze(-1)
    return _unchunk(dq, c), _unchunk(dk, c), _unchunk(dv, c)


# ----------------------------------------------------------------------------- cross-shard pieces (LASP-2)

def _row_weights(log_decay, n: int, start: int, device, dtype, reverse: bool = False):
    """``lambda^(start + i)`` (or, ``reverse``, ``lambda^(start + n-1-i)``) as ``[1, n, H, 1]``."""
    if log_decay is None:
        return None
    e = torch.arange(start, start + n, device=device, dtype=dtype)
    p = torch.exp(log_decay.to(device, dtype).view(-1, 1) * e.view(1, -1))  # [H, n]
    return (p.flip(-1) if reverse else p).t().unsqueeze(0).unsqueeze(-1)


def chunk_state(k, v, log_decay=None) -> torch.Tensor:
    """The shard's final state from zero, ``M = sum_s lambda^(C-1-s) k_s^T v_s``: ``[B, H, Dk, Dv]``
    (accumulator dtype)."""
    acc = acc_dtype(k.dtype)
    w = _row_weights(log_decay, k.shape[1], 0, k.device, acc, reverse=True)
    kf = k.to(acc) if w is None else k.to(acc) * w
    return torch.einsum("bshk,bshv->bhkv", kf, v.to(acc))


def inter_chunk(q, state, *, log_decay=None) -> torch.Tensor:
    """``lambda^(i+1) q_i S`` for an incoming state ``S [B, H, Dk, Dv]``: ``[B, C, H, Dv]`` in
    ``state``'s dtype (``i`` is the position in the shard)."""
    acc = state.dtype
    o = torch.einsum("bihk,bhkv->bihv", q.to(acc), state)
    w = _row_weights(log_decay, q.shape[1], 1, q.device, acc)
    return o if w is None else o * w


def state_grad(q, dout, *, log_decay=None) -> torch.Tensor:
    """Gradient of the loss w.r.t. the incoming state of :func:`inter_chunk`:
    ``G = sum_i lambda^(i+1) q_i^T dO_i``, ``[B, H, Dk, Dv]`` (accumulator dtype)."""
    acc = acc_dtype(q.dtype)
    w = _row_weights(log_decay, q.shape[1], 1, q.device, acc)
    qw = q.to(acc) if w is None else q.to(acc) * w
    return torch.einsum("bihk,bihv->bhkv", qw, dout.to(acc))


def inter_chunk_backward(dout, k, v, state, state_grad_in, *, log_decay=None):
    """Gradients of the cross-shard terms, given the incoming state ``S`` and the gradient ``R``
    arriving for this shard's own state ``M``: ``dq_i = lambda^(i+1) dO_i S^T`` (w.r.t. the scaled
    q), ``dk_s = lambda^(C-1-s) v_s R^T``, ``dv_s = lambda^(C-1-s) k_s R``, in ``state``'s dtype."""
    acc, c = state.dtype, k.shape[1]
    dq = torch.einsum("bihv,bhkv->bihk", dout.to(acc), state)
    dk = torch.einsum("bihv,bhkv->bihk", v.to(acc), state_grad_in)
    dv = torch.einsum("bihk,bhkv->bihv", k.to(acc), state_grad_in)
    wq = _row_weights(log_decay, c, 1, k.device, acc)
    wk = _row_weights(log_decay, c, 0, k.device, acc, reverse=True)
    if wq is not None:
        dq, dk, dv = dq * wq, dk * wk, dv * wk
    return dq, dk, dv
