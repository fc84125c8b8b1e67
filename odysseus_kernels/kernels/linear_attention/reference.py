"""Linear attention (LASP-2's form: no normaliser, optional decay): the O(L^2) oracle and the chunked
pure-PyTorch path. Local compute only.

Decay (fla naming, both optional, both log-decays ``<= 0``): ``g [B, L, H]`` per token (GLA /
simple-GLA / Mamba-2 style) and ``g_gamma [H]`` per head, constant over time (equivalent to
``g[b, t, h] = g_gamma[h]`` for every token; both given: they add). With ``G_t = sum_{t'<=t} g_t'``
the inclusive cumulative log-decay, over a sequence ``[B, L, H, D]`` (``scale`` multiplies q):

- causal: ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s`` (for ``g_gamma`` alone:
  ``lambda_h^(t-s)`` with ``lambda_h = exp(g_gamma[h])``); the recurrence
  ``S_t = exp(g_t) S_(t-1) + k_t^T v_t``, ``o_t = q_t S_t``;
- non-causal (no decay): ``o_t = q_t sum_s k_s^T v_s``.

The chunked form (the same decomposition as the Triton kernels, so each kernel has a torch twin):
the shard is cut into chunks of ``bt`` tokens (the last one may be shorter, ``n_u`` tokens); ``gc``
is the cumulative log-decay *inside* a chunk (``gc_i``, ``i`` the position in the chunk) and
``gl_u = gc_(n_u - 1)`` the decay across chunk ``u``:

- ``S_u = exp(gl_u) S_(u-1) + sum_s exp(gl_u - gc_s) k_s^T v_s`` is the state after chunk ``u``
  (``S_(-1) = 0``); :func:`chunk_fwd_h_torch` returns every ``h_u = S_(u-1)`` and the final ``S``,
  which is the shard's own state ``M`` that LASP-2 all-gathers;
- ``o_i = exp(gc_i) q_i h_u + sum_{s<=i} exp(gc_i - gc_s) (q_i . k_s) v_s`` (:func:`chunk_fwd_o_torch`;
  the diagonal ``s = i`` included);
- backward: ``dh_u = dL/dS_u`` runs backwards in time,
  ``dL/dS_(u-1) = exp(gl_u) dh_u + sum_i exp(gc_i) q_i^T dO_i`` (:func:`chunk_bwd_dh_torch`); its
  last value ``G = sum_i exp(G_i) q_i^T dO_i`` (shard positions) is the gradient of an incoming
  state, which LASP-2's backward all-gathers;
- ``dq_i = exp(gc_i) dO_i h_u^T + sum_{s<=i} exp(gc_i - gc_s) (dO_i . v_s) k_s``,
  ``dk_s = exp(gl_u - gc_s) v_s dh_u^T + sum_{i>=s} exp(gc_i - gc_s) (dO_i . v_s) q_i``,
  ``dv_s = exp(gl_u - gc_s) k_s dh_u + sum_{i>=s} exp(gc_i - gc_s) (q_i . k_s) dO_i``
  (:func:`chunk_bwd_dqkv_torch`);
- the decay gradient needs no kernel of its own: ``dL/dG_t = q_t . dq_t - k_t . dk_t`` (plus, at the
  shard's last token, the terms of the states leaving the shard) and ``dg_s = sum_{t>=s} dL/dG_t``
  (:func:`decay_grad`); ``dg_gamma[h] = sum_{b,s} dg[b, s, h]``.

The cross-shard pieces LASP-2 adds around them (:func:`inter_chunk`, :func:`inter_chunk_backward`,
:func:`chunk_state`, :func:`state_grad`) use positions in the whole shard. Everything accumulates in
fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._util import acc_dtype


def token_decay(g, g_gamma, b: int, c: int, h: int, dtype, device):
    """The per-token log-decay ``[B, C, H]`` in ``dtype`` (``g`` plus ``g_gamma`` broadcast), or
    ``None`` without decay. Differentiable w.r.t. both."""
    if g is None and g_gamma is None:
        return None
    out = torch.zeros(b, c, h, dtype=dtype, device=device)
    if g is not None:
        out = out + g.to(device=device, dtype=dtype)
    if g_gamma is not None:
        out = out + g_gamma.to(device=device, dtype=dtype).view(1, 1, h)
    return out


def shard_cumsum(g, g_gamma, b: int, c: int, h: int, dtype, device):
    """``G [B, C, H]``: the inclusive cumulative log-decay over the shard (``None`` without decay)."""
    t = token_decay(g, g_gamma, b, c, h, dtype, device)
    return None if t is None else t.cumsum(1)


def linear_attention_ref(q, k, v, *, g=None, g_gamma=None, causal=True, scale=1.0):
    """The O(L^2) formula: the oracle of the tests.

    Args:
        q, k: ``[B, L, H, Dk]``; v: ``[B, L, H, Dv]`` (any floating dtype; float64 for tests).
        g: ``None`` or ``[B, L, H]`` per-token log-decays ``<= 0`` (causal only).
        g_gamma: ``None`` or ``[H]`` per-head constant log-decays ``<= 0`` (causal only).
        causal: ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s``; else ``o_t = q_t sum_s k_s^T v_s``.
        scale: multiplies q.
    Returns:
        ``[B, L, H, Dv]`` in ``q.dtype`` (differentiable w.r.t. q, k, v, g and g_gamma).
    Example:
        >>> o = linear_attention_ref(q, k, v, g_gamma=torch.full((H,), -0.05, dtype=torch.float64))
    """
    acc = acc_dtype(q.dtype)
    qf, kf, vf = (t.to(acc) for t in (q, k, v))
    s = torch.einsum("bihd,bjhd->bhij", qf * scale, kf)
    b, L, h = q.shape[:3]
    if causal:
        i = torch.arange(L, device=q.device)
        mask = i.view(-1, 1) >= i.view(1, -1)  # t >= s
        big_g = shard_cumsum(g, g_gamma, b, L, h, acc, q.device)
        if big_g is None:
            s = s * mask.to(acc)
        else:
            gt = big_g.permute(0, 2, 1)  # [B, H, L]
            diff = gt.unsqueeze(-1) - gt.unsqueeze(-2)  # G_t - G_s
            zero = torch.zeros((), dtype=acc, device=q.device)
            # masked before exp: above the diagonal G_t - G_s >= 0 could overflow
            s = s * torch.where(mask, torch.exp(torch.where(mask, diff, zero)), zero)
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


def _weights(g, g_gamma, b: int, h: int, c: int, bt: int, dtype, device):
    """Decay weights of the chunked form (all ones without decay).

    Returns ``wq [B, H, NT, bt]`` = ``exp(gc_i)``, ``wk [B, H, NT, bt]`` = ``exp(gl_u - gc_s)`` (0 past
    the end of the shard), ``dmat [B, H, NT, bt, bt]`` = ``exp(gc_i - gc_s)`` for ``s <= i`` else 0
    (the causal mask, diagonal included) and ``chunk [B, H, NT]`` = ``exp(gl_u)``.
    """
    nt = -(-c // bt)
    t = token_decay(g, g_gamma, b, c, h, dtype, device)
    if t is None:
        t = torch.zeros(b, c, h, dtype=dtype, device=device)
    # zero decay past the end: the cumulative sum there stays at gl_u
    t = F.pad(t, (0, 0, 0, nt * bt - c)).view(b, nt, bt, h).permute(0, 3, 1, 2)  # [B, H, NT, bt]
    gc = t.cumsum(-1)
    gl = gc[..., -1:]
    pos = torch.arange(bt, device=device)
    valid = (pos.view(1, -1) + bt * torch.arange(nt, device=device).view(-1, 1)) < c  # [NT, bt]
    zero = torch.zeros((), dtype=dtype, device=device)
    wq = torch.exp(gc)
    wk = torch.where(valid, torch.exp(gl - gc), zero)
    mask = pos.view(-1, 1) >= pos.view(1, -1)  # i >= s
    diff = gc.unsqueeze(-1) - gc.unsqueeze(-2)
    dmat = torch.where(mask, torch.exp(torch.where(mask, diff, zero)), zero)
    return wq, wk, dmat, torch.exp(gl.squeeze(-1))


def chunk_fwd_h_torch(k, v, *, g=None, g_gamma=None, bt: int = 64):
    """States entering every chunk and the shard's final state (torch twin of the Triton kernels).

    Args:
        k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``; g: ``None`` or ``[B, C, H]``; g_gamma: ``None`` or
        ``[H]``; bt: chunk size.
    Returns:
        ``h [B, H, NT, Dk, Dv]`` (``h[:, :, u] = S_(u-1)``) and ``final [B, H, Dk, Dv]`` (``= M``), in
        the accumulator dtype.
    """
    b, c, nh = k.shape[:3]
    kc, vc = _chunks(k, bt), _chunks(v, bt)
    _, wk, _, chunk = _weights(g, g_gamma, b, nh, c, bt, kc.dtype, k.device)
    local = torch.einsum("bhusk,bhusv->bhukv", kc * wk.unsqueeze(-1), vc)  # [B, H, NT, Dk, Dv]
    run = local.new_zeros(local.shape[:2] + local.shape[3:])
    hs = []
    for u in range(local.shape[2]):
        hs.append(run)
        run = run * chunk[:, :, u, None, None] + local[:, :, u]
    return (torch.stack(hs, dim=2) if hs else local), run


def chunk_fwd_o_torch(q, k, v, h, *, g=None, g_gamma=None, bt: int = 64) -> torch.Tensor:
    """Shard-local causal output from the chunk states ``h`` of :func:`chunk_fwd_h_torch`:
    ``[B, C, H, Dv]`` in the accumulator dtype."""
    b, c, nh = q.shape[:3]
    qc, kc, vc = _chunks(q, bt), _chunks(k, bt), _chunks(v, bt)
    wq, _, dmat, _ = _weights(g, g_gamma, b, nh, c, bt, qc.dtype, q.device)
    a = torch.einsum("bhuik,bhusk->bhuis", qc, kc) * dmat  # [B, H, NT, bt, bt]
    o = torch.einsum("bhuis,bhusv->bhuiv", a, vc)
    o = o + torch.einsum("bhuik,bhukv->bhuiv", qc * wq.unsqueeze(-1), h.to(qc.dtype))
    return _unchunk(o, c)


def chunk_bwd_dh_torch(q, do, *, g=None, g_gamma=None, bt: int = 64):
    """Gradients of the chunk states, backwards in time (torch twin of the Triton kernels).

    Returns:
        ``dh [B, H, NT, Dk, Dv]`` (``dh[:, :, u] = dL/dS_u`` from the later chunks of the shard) and
        ``G [B, H, Dk, Dv]`` ``= sum_i exp(G_i) q_i^T dO_i`` (the gradient of an incoming state).
    """
    b, c, nh = q.shape[:3]
    qc, doc = _chunks(q, bt), _chunks(do, bt)
    wq, _, _, chunk = _weights(g, g_gamma, b, nh, c, bt, qc.dtype, q.device)
    local = torch.einsum("bhuik,bhuiv->bhukv", qc * wq.unsqueeze(-1), doc)
    run = local.new_zeros(local.shape[:2] + local.shape[3:])
    dhs = []
    for u in range(local.shape[2] - 1, -1, -1):
        dhs.append(run)
        run = run * chunk[:, :, u, None, None] + local[:, :, u]
    return (torch.stack(dhs[::-1], dim=2) if dhs else local), run


def chunk_bwd_dqkv_torch(q, k, v, do, h, dh, *, g=None, g_gamma=None, bt: int = 64):
    """Gradients of the shard-local causal output w.r.t. ``q, k, v`` from ``h`` and ``dh``:
    ``[B, C, H, D*]`` each, in the accumulator dtype."""
    b, c, nh = q.shape[:3]
    qc, kc, vc, doc = (_chunks(t, bt) for t in (q, k, v, do))
    wq, wk, dmat, _ = _weights(g, g_gamma, b, nh, c, bt, qc.dtype, q.device)
    h, dh = h.to(qc.dtype), dh.to(qc.dtype)
    ds = torch.einsum("bhuiv,bhusv->bhuis", doc, vc) * dmat  # dL/d(q_i . k_s)
    a = torch.einsum("bhuik,bhusk->bhuis", qc, kc) * dmat
    dq = torch.einsum("bhuis,bhusk->bhuik", ds, kc) + torch.einsum("bhuiv,bhukv->bhuik", doc, h) * wq.unsqueeze(-1)
    dk = torch.einsum("bhuis,bhuik->bhusk", ds, qc) + torch.einsum("bhusv,bhukv->bhusk", vc, dh) * wk.unsqueeze(-1)
    dv = torch.einsum("bhuis,bhuiv->bhusv", a, doc) + torch.einsum("bhusk,bhukv->bhusv", kc, dh) * wk.unsqueeze(-1)
    return _unchunk(dq, c), _unchunk(dk, c), _unchunk(dv, c)


def decay_grad(q, dq, k, dk, last=None) -> torch.Tensor:
    """Gradient of the per-token log-decay, from the finished gradients (no kernel needed).

    With ``G`` the inclusive cumulative log-decay, ``dL/dG_t = q_t . dq_t - k_t . dk_t`` (``q``/``dq``
    the scaled q and the gradient w.r.t. it, or the unscaled pair: the product is the same), plus,
    at the shard's last token, ``last = <R, M + a S>`` (``[B, H]``; the states leaving the shard,
    LASP-2 only). ``dg_s = sum_{t>=s} dL/dG_t``.

    Returns:
        ``dg [B, C, H]`` in the accumulator dtype of ``q``.
    """
    acc = acc_dtype(q.dtype)
    d = (q.to(acc) * dq.to(acc)).sum(-1) - (k.to(acc) * dk.to(acc)).sum(-1)  # [B, C, H]
    dg = d.flip(1).cumsum(1).flip(1)
    if last is not None:
        dg = dg + last.to(acc).unsqueeze(1)
    return dg


# ----------------------------------------------------------------------------- cross-shard pieces (LASP-2)

def chunk_state(k, v) -> torch.Tensor:
    """The shard's state ``M = sum_s k_s^T v_s`` (non-causal, no decay): ``[B, H, Dk, Dv]``
    (accumulator dtype)."""
    acc = acc_dtype(k.dtype)
    return torch.einsum("bshk,bshv->bhkv", k.to(acc), v.to(acc))


def inter_chunk(q, state, *, big_g=None) -> torch.Tensor:
    """``exp(G_i) q_i S`` for an incoming state ``S [B, H, Dk, Dv]`` (``big_g [B, C, H]``: the
    shard's inclusive cumulative log-decay, or ``None``): ``[B, C, H, Dv]`` in ``state``'s dtype."""
    o = torch.einsum("bihk,bhkv->bihv", q.to(state.dtype), state)
    return o if big_g is None else o * torch.exp(big_g.to(state.dtype)).unsqueeze(-1)


def state_grad(q, dout) -> torch.Tensor:
    """Gradient of the loss w.r.t. the state of the non-causal form: ``G = sum_i q_i^T dO_i``,
    ``[B, H, Dk, Dv]`` (accumulator dtype)."""
    acc = acc_dtype(q.dtype)
    return torch.einsum("bihk,bihv->bhkv", q.to(acc), dout.to(acc))


def inter_chunk_backward(dout, k, v, state, state_grad_in, *, big_g=None):
    """Gradients of the cross-shard terms, given the incoming state ``S`` and the gradient ``R``
    arriving for this shard's own state ``M``: ``dq_i = exp(G_i) dO_i S^T`` (w.r.t. the scaled q),
    ``dk_s = exp(G_last - G_s) v_s R^T``, ``dv_s = exp(G_last - G_s) k_s R``, in ``state``'s dtype."""
    acc = state.dtype
    dq = torch.einsum("bihv,bhkv->bihk", dout.to(acc), state)
    dk = torch.einsum("bihv,bhkv->bihk", v.to(acc), state_grad_in)
    dv = torch.einsum("bihk,bhkv->bihv", k.to(acc), state_grad_in)
    if big_g is not None:
        gg = big_g.to(acc)
        wq = torch.exp(gg).unsqueeze(-1)
        wk = torch.exp(gg[:, -1:] - gg).unsqueeze(-1)
        dq, dk, dv = dq * wq, dk * wk, dv * wk
    return dq, dk, dv
