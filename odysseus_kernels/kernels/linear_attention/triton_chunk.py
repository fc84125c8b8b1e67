"""Triton kernels for the shard-local part of (decayed, causal) linear attention, chunk-parallel.

The same decomposition as :mod:`.reference` (read its docstring for the math), in three kernels, each
with a direction flag ``REVERSE`` (forward pass: ``False``; the backward's mirror: ``True``):

- ``_chunk_local_kernel`` (grid K/V-tiles x chunks x B*H): each chunk's own state,
  ``sum_s exp(gl - gc_s) k_s^T v_s`` (``REVERSE``: ``sum_i exp(gc_i) q_i^T dO_i``);
- ``_chunk_scan_kernel`` (grid state-slices x B*H): the exclusive prefix over the chunks of the shard,
  ``h_u = S_(u-1)``, ``S_u = exp(gl_u) S_(u-1) + local_u``, in place, and the final state ``M``
  (``REVERSE``: the suffix, giving ``dh`` and ``G``). The only sequential loop (over ``C / BT``
  chunks, elementwise on the state: no matmul);
- ``_chunk_out_kernel`` (grid V-tiles x chunks x B*H): every chunk at once,
  ``exp(gc_i) q_i h_u + (mask(Q K^T) * decay) V`` (``REVERSE``: ``dv_s = exp(gl - gc_s) k_s dh_u +
  (mask(K Q^T) * decay) dO``, the same kernel with the roles of queries and keys swapped). ``dq`` and
  ``dk`` are the same recurrence again with ``(q, k, v) -> (dO, v, k)`` over ``h^T`` (forward
  direction) and ``(k, q, dO) -> (v, dO, q)`` over ``dh^T`` (``REVERSE``): flag ``TRANS_H``.

Everything but the scan is parallel over chunks: at B=1, H=16 and 8K tokens the chunk kernels have
128 chunks x 16 heads (x tiles) programs and the scan 16 x 32 state slices (see
:func:`launch_grids`), more than twice the SMs of an H100/H200.

Decay (constexprs): none, ``USE_G_GAMMA`` (per-head constant ``g_gamma [H]``: ``gc_i = gamma (i+1)``
computed in the kernel) or ``USE_G`` (per-token ``g``: the host passes the chunk-local inclusive
cumulative sum ``gc [B, C, H]`` fp32; ``g`` and ``g_gamma`` together are folded into one ``g``).
Exact causality at every token: the intra-chunk mask is ``s <= i``, diagonal included, and the last
chunk may be shorter than ``BT`` (masked loads, its own ``gl``). Head dims need not be powers of two
(tiles are padded with masked lanes); ``H``, ``DK``, ``DV`` and the length are runtime arguments, so
one compiled kernel serves every head count and head dim of a launch config.

Precision: 16-bit inputs go to ``tl.dot`` as 16-bit operands with fp32 accumulation (tensor cores,
``wgmma`` on sm_90); the states ``h``/``dh``, the chunk-local states and the decays are fp32 in
memory and are cast to the input dtype only as a ``tl.dot`` operand (as fla does; with fp16 inputs a
state entry beyond fp16's range, 65504, would overflow there: bf16 or a decay avoids it). fp32 inputs use
``input_precision="ieee"`` (``IEEE`` constexpr): exact fp32 products, no TF32, so fp32 is as exact on
a GPU as under ``TRITON_INTERPRET=1`` (at the cost of not using tensor cores). Launch configs come
from :mod:`.configs` (the same table the ahead-of-time compile gate checks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import cdiv
from ..launch import prepared


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _rows(P, i_b, i_h, C, H, D, i_t, i_d, BT: tl.constexpr, BD: tl.constexpr):
    """Block pointer to the ``[BT, BD]`` tile (tokens x features) of a ``[B, C, H, D]`` tensor."""
    return tl.make_block_ptr(P + (i_b.to(tl.int64) * C * H + i_h) * D, (C, D), (H * D, 1), (i_t * BT, i_d * BD),
                             (BT, BD), (1, 0))


@triton.jit
def _cols(P, i_b, i_h, C, H, D, i_t, i_d, BT: tl.constexpr, BD: tl.constexpr):
    """Block pointer to the transposed ``[BD, BT]`` tile of a ``[B, C, H, D]`` tensor."""
    return tl.make_block_ptr(P + (i_b.to(tl.int64) * C * H + i_h) * D, (D, C), (1, H * D), (i_d * BD, i_t * BT),
                             (BD, BT), (0, 1))


@triton.jit
def _state(P, i_bh, NT, i_t, DK, DV, i_k, i_v, BK: tl.constexpr, BV: tl.constexpr, TRANS: tl.constexpr):
    """Block pointer to the ``[BK, BV]`` tile of chunk ``i_t``'s ``[DK, DV]`` state in a
    ``[B*H, NT, DK, DV]`` tensor (``TRANS``: the tensor is ``[B*H, NT, DV, DK]``; the tile of its transpose)."""
    base = P + (i_bh.to(tl.int64) * NT + i_t) * DK * DV
    if TRANS:
        return tl.make_block_ptr(base, (DK, DV), (1, DK), (i_k * BK, i_v * BV), (BK, BV), (0, 1))
    else:
        return tl.make_block_ptr(base, (DK, DV), (DV, 1), (i_k * BK, i_v * BV), (BK, BV), (1, 0))


@triton.jit
def _decays(GC, GAMMA, i_b, i_h, i_t, o_t, n, C, H, BT: tl.constexpr, USE_G: tl.constexpr):
    """``[BT]`` chunk-local inclusive cumulative log-decay ``gc`` (0 past the end) and ``gl``."""
    m_t = o_t < n
    if USE_G:
        base = GC + (i_b.to(tl.int64) * C + i_t * BT) * H + i_h
        b_g = tl.load(base + o_t.to(tl.int64) * H, mask=m_t, other=0.0)
        g_last = tl.load(base + (n - 1).to(tl.int64) * H)
    else:
        gamma = tl.load(GAMMA + i_h)
        b_g = tl.where(m_t, gamma * (o_t + 1).to(tl.float32), 0.0)
        g_last = gamma * n.to(tl.float32)
    return b_g, g_last


@triton.jit(do_not_specialize=["C", "NT"])
def _chunk_local_kernel(X, Y, L, GC, GAMMA, C, NT, H, DK, DV, BT: tl.constexpr, BK: tl.constexpr,
                        BV: tl.constexpr, USE_G: tl.constexpr, USE_G_GAMMA: tl.constexpr,
                        REVERSE: tl.constexpr, IEEE: tl.constexpr):
    """``L[b, h, u] = sum_s w_s x_s^T y_s`` over chunk ``u``: forward ``x = k, y = v,
    w = exp(gl - gc_s)``; ``REVERSE``: ``x = q, y = dO, w = exp(gc_i)``. fp32 ``[BK, BV]`` tiles."""
    i_kv, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nv = tl.cdiv(DV, BV)
    i_k, i_v = i_kv // nv, i_kv % nv
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    n = tl.minimum(BT, C - i_t * BT)  # tokens in this chunk
    m_t = o_t < n
    b_x = tl.load(_cols(X, i_b, i_h, C, H, DK, i_t, i_k, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_y = tl.load(_rows(Y, i_b, i_h, C, H, DV, i_t, i_v, BT, BV), boundary_check=(0, 1), padding_option="zero")
    if USE_G or USE_G_GAMMA:
        b_g, g_last = _decays(GC, GAMMA, i_b, i_h, i_t, o_t, n, C, H, BT, USE_G)
        if REVERSE:
            w = tl.exp(b_g)
        else:
            w = tl.exp(tl.where(m_t, g_last - b_g, 0.0))  # masked before exp: no overflow past the end
        b_x = (b_x * tl.where(m_t, w, 0.0)[None, :]).to(b_x.dtype)
    b_l = _dot(b_x, b_y, IEEE)
    tl.store(_state(L, i_bh, NT, i_t, DK, DV, i_k, i_v, BK, BV, False), b_l, boundary_check=(0, 1))


@triton.jit(do_not_specialize=["C", "NT"])
def _chunk_scan_kernel(L, HT, GC, GAMMA, C, NT, H, DKV, BT: tl.constexpr, BS: tl.constexpr,
                       USE_G: tl.constexpr, USE_G_GAMMA: tl.constexpr, REVERSE: tl.constexpr):
    """In place over ``L [B*H, NT, DKV]`` (fp32): ``L[u] <- S_(u-1)``, ``S_u = exp(gl_u) S_(u-1) + L[u]``
    in chunk order (``REVERSE``: from the last chunk), and ``HT <- S`` after the last one visited."""
    i_s, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_s = i_s * BS + tl.arange(0, BS)
    m_s = o_s < DKV
    p_l = L + i_bh.to(tl.int64) * NT * DKV + o_s
    b_s = tl.zeros([BS], dtype=tl.float32)
    for j in range(NT):
        if REVERSE:
            i_t = NT - 1 - j
        else:
            i_t = j
        p = p_l + i_t.to(tl.int64) * DKV
        b_l = tl.load(p, mask=m_s, other=0.0)
        tl.store(p, b_s, mask=m_s)
        if USE_G:
            n = tl.minimum(BT, C - i_t * BT)
            g_last = tl.load(GC + (i_b.to(tl.int64) * C + i_t * BT + n - 1) * H + i_h)
            b_s = b_s * tl.exp(g_last) + b_l
        elif USE_G_GAMMA:
            n = tl.minimum(BT, C - i_t * BT)
            b_s = b_s * tl.exp(tl.load(GAMMA + i_h) * n.to(tl.float32)) + b_l
        else:
            b_s += b_l
    tl.store(HT + i_bh.to(tl.int64) * DKV + o_s, b_s, mask=m_s)


@triton.jit(do_not_specialize=["C", "NT"])
def _chunk_out_kernel(X, Y, Z, Hs, O, GC, GAMMA, C, NT, H, DK, DV, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, USE_G: tl.constexpr, USE_G_GAMMA: tl.constexpr,
                      REVERSE: tl.constexpr, TRANS_H: tl.constexpr, IEEE: tl.constexpr):
    """``o_i = w_i x_i S + sum_{s in span(i)} exp(+-(gc_i - gc_s)) (x_i . y_s) z_s``, ``S`` the chunk's
    ``[DK, DV]`` state (``TRANS_H``: ``Hs`` holds ``S^T``), ``DK``/``DV`` the feature dims of ``x``/``z``:

    - output (``x = q, y = k, z = v``, ``Hs = h``): ``o_i = exp(gc_i) q_i h + sum_{s<=i}
      exp(gc_i - gc_s) (q_i . k_s) v_s``;
    - dq (``x = dO, y = v, z = k``, ``Hs = h``, ``TRANS_H``): the same with ``h^T``;
    - ``REVERSE``, dv (``x = k, y = q, z = dO``, ``Hs = dh``): ``dv_s = exp(gl - gc_s) k_s dh +
      sum_{i>=s} exp(gc_i - gc_s) (k_s . q_i) dO_i``;
    - ``REVERSE``, dk (``x = v, y = dO, z = q``, ``Hs = dh``, ``TRANS_H``): the same with ``dh^T``.
    """
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    n = tl.minimum(BT, C - i_t * BT)
    m_t = o_t < n
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_a = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(DK, BK)):
        b_x = tl.load(_rows(X, i_b, i_h, C, H, DK, i_t, i_k, BT, BK), boundary_check=(0, 1), padding_option="zero")
        b_yt = tl.load(_cols(Y, i_b, i_h, C, H, DK, i_t, i_k, BT, BK), boundary_check=(0, 1), padding_option="zero")
        b_h = tl.load(_state(Hs, i_bh, NT, i_t, DK, DV, i_k, i_v, BK, BV, TRANS_H), boundary_check=(0, 1),
                      padding_option="zero")
        b_o += _dot(b_x, b_h.to(b_x.dtype), IEEE)
        b_a += _dot(b_x, b_yt, IEEE)
    if REVERSE:
        keep = o_t[None, :] >= o_t[:, None]  # rows are keys s, columns queries i >= s
    else:
        keep = o_t[:, None] >= o_t[None, :]  # rows are queries i, columns keys s <= i
    if USE_G or USE_G_GAMMA:
        b_g, g_last = _decays(GC, GAMMA, i_b, i_h, i_t, o_t, n, C, H, BT, USE_G)
        if REVERSE:
            b_o *= tl.where(m_t, tl.exp(tl.where(m_t, g_last - b_g, 0.0)), 0.0)[:, None]
            diff = b_g[None, :] - b_g[:, None]
        else:
            b_o *= tl.exp(b_g)[:, None]
            diff = b_g[:, None] - b_g[None, :]
        b_a = tl.where(keep, b_a * tl.exp(tl.where(keep, diff, 0.0)), 0.0)
    else:
        b_a = tl.where(keep, b_a, 0.0)
    b_z = tl.load(_rows(Z, i_b, i_h, C, H, DV, i_t, i_v, BT, BV), boundary_check=(0, 1), padding_option="zero")
    b_o += _dot(b_a.to(b_z.dtype), b_z, IEEE)
    tl.store(_rows(O, i_b, i_h, C, H, DV, i_t, i_v, BT, BV), b_o.to(O.dtype.element_ty), boundary_check=(0, 1))


KERNELS = {"local": _chunk_local_kernel, "scan": _chunk_scan_kernel, "out": _chunk_out_kernel}

# ------------------------------------------------------------------------------------------ host functions

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(*ts):
    for t in ts:
        if t.dtype not in TRITON_DTYPES:
            raise TypeError(f"Triton linear-attention kernels take {TRITON_DTYPES}, got {t.dtype}")
    return [t.contiguous() for t in ts]


def chunk_cumsum(g, g_gamma, b: int, c: int, h: int, bt: int, device) -> torch.Tensor | None:
    """``gc [B, C, H]`` fp32: the inclusive cumulative sum of ``g (+ g_gamma)`` restarting at every
    chunk of ``bt`` tokens (``None`` when ``g`` is ``None``: ``g_gamma`` alone is computed in the
    kernels)."""
    if g is None:
        return None
    t = g.to(device=device, dtype=torch.float32)
    if g_gamma is not None:
        t = t + g_gamma.to(device=device, dtype=torch.float32).view(1, 1, h)
    nt = cdiv(c, bt)
    if nt * bt != c:
        t = torch.nn.functional.pad(t, (0, 0, 0, nt * bt - c))
    return t.view(b, nt, bt, h).cumsum(2).view(b, nt * bt, h)[:, :c].contiguous()


class Decay:
    """The decay arguments of one launch: the ``gc``/``gamma`` pointers and the two constexprs."""

    def __init__(self, g, g_gamma, b: int, c: int, h: int, bt: int, device):
        gc = chunk_cumsum(g, g_gamma, b, c, h, bt, device)
        self.use_g = gc is not None
        self.use_gamma = g_gamma is not None and not self.use_g
        dummy = torch.zeros(1, dtype=torch.float32, device=device)  # never read
        self.gc = gc if gc is not None else dummy
        self.gamma = g_gamma.to(device=device, dtype=torch.float32).contiguous() if self.use_gamma else dummy

    @property
    def flags(self) -> dict:
        return {"USE_G": self.use_g, "USE_G_GAMMA": self.use_gamma}


def _launch(name, grid, args, cfg, **constexprs):
    prepared(KERNELS[name], **cfg.constexprs(name), **constexprs, num_warps=cfg.warps(name),
             num_stages=cfg.stages(name))(grid, tuple(args))


def launch_grids(b: int, c: int, h: int, dk: int, dv: int, cfg) -> dict:
    """The launch grid of every kernel for a shard ``[B, C, H, D*]`` under config ``cfg`` (a
    :class:`.configs.LaunchConfig`): ``{"local": (..), "scan": (..), "out": (..), "dq": (..), "dk": (..),
    "dv": (..)}`` (the last three launch the ``out`` kernel)."""
    nt = cdiv(c, cfg.bt)
    bh = b * h
    return {
        "local": (cdiv(dk, cfg.bk) * cdiv(dv, cfg.bv), nt, bh),
        "scan": (cdiv(dk * dv, cfg.bs), bh),
        "out": (cdiv(dv, cfg.bv), nt, bh),
        "dq": (cdiv(dk, cfg.bv), nt, bh),
        "dk": (cdiv(dk, cfg.bv), nt, bh),
        "dv": (cdiv(dv, cfg.bv), nt, bh),
    }


def _states(x, y, dec: Decay, cfg, reverse: bool):
    """Local chunk states then the scan: ``(h or dh) [B, H, NT, Dk, Dv]`` and the final state, fp32."""
    b, c, nh, dk = x.shape
    dv = y.shape[-1]
    nt = cdiv(c, cfg.bt)
    grids = launch_grids(b, c, nh, dk, dv, cfg)
    hs = torch.empty(b, nh, nt, dk, dv, dtype=torch.float32, device=x.device)
    final = torch.empty(b, nh, dk, dv, dtype=torch.float32, device=x.device)
    if b * nh * c == 0:
        return hs, final.zero_()
    ieee = x.dtype == torch.float32
    _launch("local", grids["local"], (x, y, hs, dec.gc, dec.gamma, c, nt, nh, dk, dv), cfg, REVERSE=reverse,
            IEEE=ieee, **dec.flags)
    _launch("scan", grids["scan"], (hs, final, dec.gc, dec.gamma, c, nt, nh, dk * dv), cfg, REVERSE=reverse,
            **dec.flags)
    return hs, final


def chunk_fwd_h_triton(k, v, *, g=None, g_gamma=None, cfg):
    """Triton :func:`.reference.chunk_fwd_h_torch`: ``h [B, H, NT, Dk, Dv]`` and ``final [B, H, Dk, Dv]``,
    both fp32."""
    k, v = _check(k, v.to(k.dtype))
    b, c, nh, _ = k.shape
    return _states(k, v, Decay(g, g_gamma, b, c, nh, cfg.bt, k.device), cfg, reverse=False)


def chunk_bwd_dh_triton(q, do, *, g=None, g_gamma=None, cfg):
    """Triton :func:`.reference.chunk_bwd_dh_torch`: ``dh [B, H, NT, Dk, Dv]`` and ``G [B, H, Dk, Dv]``,
    both fp32."""
    q, do = _check(q, do.to(q.dtype))
    b, c, nh, _ = q.shape
    return _states(q, do, Decay(g, g_gamma, b, c, nh, cfg.bt, q.device), cfg, reverse=True)


def chunk_fwd_o_triton(q, k, v, h, *, g=None, g_gamma=None, cfg, out_dtype=torch.float32):
    """Triton :func:`.reference.chunk_fwd_o_torch`: ``[B, C, H, Dv]`` in ``out_dtype``."""
    q, k, v = _check(q, k.to(q.dtype), v.to(q.dtype))
    b, c, nh, dk = q.shape
    dv = v.shape[-1]
    out = torch.empty(b, c, nh, dv, dtype=out_dtype, device=q.device)
    if out.numel() == 0:
        return out
    dec = Decay(g, g_gamma, b, c, nh, cfg.bt, q.device)
    grid = launch_grids(b, c, nh, dk, dv, cfg)["out"]
    _launch("out", grid, (q, k, v, h.contiguous(), out, dec.gc, dec.gamma, c, h.shape[2], nh, dk, dv), cfg,
            REVERSE=False, TRANS_H=False, IEEE=q.dtype == torch.float32, **dec.flags)
    return out


def chunk_bwd_dqkv_triton(q, k, v, do, h, dh, *, g=None, g_gamma=None, cfg, out_dtype=torch.float32):
    """Triton :func:`.reference.chunk_bwd_dqkv_torch`: ``dq, dk, dv`` in ``out_dtype``."""
    q, k, v, do = _check(q, k.to(q.dtype), v.to(q.dtype), do.to(q.dtype))
    b, c, nh, dk = q.shape
    dv = v.shape[-1]
    dq = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    dkk = torch.empty(k.shape, dtype=out_dtype, device=q.device)
    dvv = torch.empty(v.shape, dtype=out_dtype, device=q.device)
    if b * c * nh == 0:
        return dq, dkk, dvv
    dec = Decay(g, g_gamma, b, c, nh, cfg.bt, q.device)
    grids = launch_grids(b, c, nh, dk, dv, cfg)
    nt, ieee = h.shape[2], q.dtype == torch.float32
    h, dh = h.contiguous(), dh.contiguous()
    # one kernel, three roles (see _chunk_out_kernel): dv, then dq and dk with the states transposed
    for name, x, y, z, hs, o, rev, trans in (("dv", k, q, do, dh, dvv, True, False),
                                             ("dq", do, v, k, h, dq, False, True),
                                             ("dk", v, do, q, dh, dkk, True, True)):
        d_x, d_z = x.shape[-1], z.shape[-1]
        _launch("out", grids[name], (x, y, z, hs, o, dec.gc, dec.gamma, c, nt, nh, d_x, d_z), cfg, REVERSE=rev,
                TRANS_H=trans, IEEE=ieee, **dec.flags)
    return dq, dkk, dvv
