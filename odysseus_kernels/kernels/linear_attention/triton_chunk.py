"""Triton kernels for the shard-local part of (decayed, causal) linear attention, chunkwise parallel.

The same decomposition as :mod:`.reference` (read its docstring for the math), in five kernels:

- ``_fwd_h_kernel``  (grid K-tiles x V-tiles x B*H): walks the chunks in order with the running
  state in registers, storing the state entering each chunk and the final state ``M``;
- ``_fwd_o_kernel``  (grid V-tiles x chunks x B*H): every chunk at once, ``lambda^(i+1) q_i h_u`` plus
  the masked, decayed ``(Q K^T) V`` of the chunk;
- ``_bwd_dh_kernel`` (like ``_fwd_h_kernel``, backwards in time): the state gradients and ``G``;
- ``_bwd_dqk_kernel`` (grid K-tiles x chunks x B*H) and ``_bwd_dv_kernel`` (V-tiles x chunks x B*H).

Only the two recurrences are sequential, over ``C / BT`` chunks with a ``[BK, BV]`` tile each; the
rest is parallel over chunks, so a shard of 64K tokens keeps the GPU busy even at batch 1.
Exact causality at every token: the intra-chunk mask is ``s <= i``, diagonal included, and the last
chunk may be shorter than ``BT`` (masked loads, its own ``lambda^(n)``). Head dims need not be powers
of two (tiles are padded with masked lanes). Inputs are fp16/bf16/fp32 ``[B, C, H, D]``; products
accumulate in fp32. The chunk states are stored in bf16 for bf16 inputs (as fla does; their matmuls
then run on bf16 tensor cores) and in fp32 otherwise (fp16's range is too small for long sums);
the matmuls against a state run in the state's dtype. On a GPU, fp32 matmuls use TF32 (Triton's
default); under ``TRITON_INTERPRET=1`` they are exact fp32.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# The interpreter runs (and would benchmark) every config: give it one, with tiles small enough that
# the tests still walk several K/V tiles.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(tiles, warps):
    if _INTERPRET:
        return [triton.Config({"BK": 16, "BV": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BK": bk, "BV": bv}, num_warps=w, num_stages=s)
            for bk in tiles for bv in tiles for w in warps for s in (2, 3)]


def _padded(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _fits(configs, args, lo: int):
    """Tiles no wider than the padded head dims (wider ones only add masked lanes) and no narrower
    than ``min(lo, padded dim)``."""
    dk, dv = _padded(args["DK"]), _padded(args["DV"])
    kept = [c for c in configs if min(lo, dk) <= c.kwargs["BK"] <= dk and min(lo, dv) <= c.kwargs["BV"] <= dv]
    return kept or [min(configs, key=lambda c: (c.kwargs["BK"], c.kwargs["BV"]))]


def _prune_state(configs, named_args, **kwargs):
    return _fits(configs, {**named_args, **kwargs}, lo=32)


def _prune_chunk(configs, named_args, **kwargs):
    return _fits(configs, {**named_args, **kwargs}, lo=64)


_KEY = ["DK", "DV", "BT", "HAS_DECAY"]
# The recurrences hold one [BK, BV] fp32 tile for the whole sequence and their grid is only
# (Dk/BK) x (Dv/BV) x B*H programs: small tiles keep the GPU busy at batch 1.
_STATE = {"configs": _configs((16, 32, 64), (2, 4)), "key": _KEY,
          "prune_configs_by": {"early_config_prune": _prune_state}}
# The chunk-parallel kernels have (C/BT) x B*H x tiles programs: wide tiles, fewer re-reads.
_CHUNK = {"configs": _configs((16, 32, 64, 128), (4, 8)), "key": _KEY,
          "prune_configs_by": {"early_config_prune": _prune_chunk}}


@triton.jit
def _causal_decay(o_t, ld, HAS_DECAY: tl.constexpr, TRANSPOSED: tl.constexpr):
    """``[BT, BT]``: ``lambda^(i-s)`` where key ``s <= `` query ``i`` (diagonal included), else 0;
    rows are queries (``TRANSPOSED``: rows are keys)."""
    if TRANSPOSED:
        dist = o_t[None, :] - o_t[:, None]
    else:
        dist = o_t[:, None] - o_t[None, :]
    if HAS_DECAY:
        return tl.where(dist >= 0, tl.exp(ld * tl.maximum(dist, 0).to(tl.float32)), 0.0)
    return tl.where(dist >= 0, 1.0, 0.0)


@triton.autotune(**_STATE)
@triton.jit(do_not_specialize=["C", "NT"])
def _fwd_h_kernel(K, V, Hs, HT, LD, C, NT, H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DK, o_v < DV
    ld = tl.load(LD + i_h).to(tl.float32) if HAS_DECAY else 0.0
    p_k = K + (i_b.to(tl.int64) * C * H + i_h) * DK  # token 0 of this (batch, head)
    p_v = V + (i_b.to(tl.int64) * C * H + i_h) * DV
    p_h = Hs + i_bh.to(tl.int64) * NT * DK * DV
    o_kv = o_k[:, None] * DV + o_v[None, :]  # [BK, BV]
    m_kv = m_k[:, None] & m_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)  # S_(u-1)
    for i_t in range(NT):
        tl.store(p_h + o_kv, b_h.to(Hs.dtype.element_ty), mask=m_kv)
        n = tl.minimum(BT, C - i_t * BT)  # tokens in this chunk
        m_t = o_t < n
        rows = (i_t * BT + o_t).to(tl.int64)
        b_k = tl.load(p_k + rows[None, :] * (H * DK) + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.0)
        b_v = tl.load(p_v + rows[:, None] * (H * DV) + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        # b_k: [BK, BT], b_v: [BT, BV]
        if HAS_DECAY:
            w_k = tl.where(m_t, tl.exp(ld * tl.maximum(n - 1 - o_t, 0).to(tl.float32)), 0.0)  # lambda^(n-1-s)
            b_h = b_h * tl.exp(ld * n.to(tl.float32)) + tl.dot((b_k * w_k[None, :]).to(b_k.dtype), b_v)
        else:
            b_h += tl.dot(b_k, b_v)
        p_h += DK * DV
    tl.store(HT + i_bh.to(tl.int64) * DK * DV + o_kv, b_h, mask=m_kv)


@triton.autotune(**_CHUNK)
@triton.jit(do_not_specialize=["C", "NT"])
def _fwd_o_kernel(Q, K, V, Hs, O, LD, C, NT, H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    rows = (i_t * BT + o_t).to(tl.int64)
    m_t = rows < C
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    ld = tl.load(LD + i_h).to(tl.float32) if HAS_DECAY else 0.0
    p_q = Q + (i_b.to(tl.int64) * C * H + i_h) * DK + rows * (H * DK)  # [BT] row starts
    p_k = K + (i_b.to(tl.int64) * C * H + i_h) * DK + rows * (H * DK)
    p_h = Hs + (i_bh.to(tl.int64) * NT + i_t) * DK * DV
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_a = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(DK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DK
        b_q = tl.load(p_q[:, None] + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)  # [BT, BK]
        b_kt = tl.load(p_k[None, :] + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.0)  # [BK, BT]
        b_h = tl.load(p_h + o_k[:, None] * DV + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)  # [BK, BV]
        b_o += tl.dot(b_q.to(b_h.dtype), b_h)
        b_a += tl.dot(b_q, b_kt)
    if HAS_DECAY:
        b_o *= tl.exp(ld * (o_t + 1).to(tl.float32))[:, None]  # lambda^(i+1)
    b_a = b_a * _causal_decay(o_t, ld, HAS_DECAY, False)
    p_v = V + (i_b.to(tl.int64) * C * H + i_h) * DV + rows[:, None] * (H * DV) + o_v[None, :]
    b_v = tl.load(p_v, mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
    b_o += tl.dot(b_a.to(b_v.dtype), b_v)
    p_o = O + (i_b.to(tl.int64) * C * H + i_h) * DV + rows[:, None] * (H * DV) + o_v[None, :]
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.autotune(**_STATE)
@triton.jit(do_not_specialize=["C", "NT"])
def _bwd_dh_kernel(Q, DO, DHs, DHT, LD, C, NT, H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr):
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < DK, o_v < DV
    ld = tl.load(LD + i_h).to(tl.float32) if HAS_DECAY else 0.0
    p_q = Q + (i_b.to(tl.int64) * C * H + i_h) * DK
    p_do = DO + (i_b.to(tl.int64) * C * H + i_h) * DV
    p_dh = DHs + (i_bh.to(tl.int64) * NT + NT - 1) * DK * DV
    o_kv = o_k[:, None] * DV + o_v[None, :]  # [BK, BV]
    m_kv = m_k[:, None] & m_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)  # dL/dS_u from the chunks after u
    for j in range(NT):
        i_t = NT - 1 - j
        tl.store(p_dh + o_kv, b_dh.to(DHs.dtype.element_ty), mask=m_kv)
        n = tl.minimum(BT, C - i_t * BT)
        m_t = o_t < n
        rows = (i_t * BT + o_t).to(tl.int64)
        b_qt = tl.load(p_q + rows[None, :] * (H * DK) + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.0)
        b_do = tl.load(p_do + rows[:, None] * (H * DV) + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        # b_qt: [BK, BT], b_do: [BT, BV]
        if HAS_DECAY:
            w_q = tl.exp(ld * (o_t + 1).to(tl.float32))  # lambda^(i+1)
            b_dh = b_dh * tl.exp(ld * n.to(tl.float32)) + tl.dot((b_qt * w_q[None, :]).to(b_qt.dtype), b_do)
        else:
            b_dh += tl.dot(b_qt, b_do)
        p_dh -= DK * DV
    tl.store(DHT + i_bh.to(tl.int64) * DK * DV + o_kv, b_dh, mask=m_kv)


@triton.autotune(**_CHUNK)
@triton.jit(do_not_specialize=["C", "NT"])
def _bwd_dqk_kernel(Q, K, V, DO, Hs, DHs, DQ, DK_, LD, C, NT, H: tl.constexpr, DK: tl.constexpr,
                    DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr):
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    rows = (i_t * BT + o_t).to(tl.int64)
    m_t = rows < C
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < DK
    ld = tl.load(LD + i_h).to(tl.float32) if HAS_DECAY else 0.0
    p_v = V + (i_b.to(tl.int64) * C * H + i_h) * DV + rows * (H * DV)  # [BT] row starts
    p_do = DO + (i_b.to(tl.int64) * C * H + i_h) * DV + rows * (H * DV)
    p_h = Hs + (i_bh.to(tl.int64) * NT + i_t) * DK * DV
    p_dh = DHs + (i_bh.to(tl.int64) * NT + i_t) * DK * DV
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)  # dL/d(q_i . k_s) before the mask
    for i_v in range(tl.cdiv(DV, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < DV
        b_v = tl.load(p_v[:, None] + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
        b_do = tl.load(p_do[:, None] + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
        o_vk = o_v[:, None] + o_k[None, :] * DV  # the [BV, BK] transpose of a state tile
        m_vk = m_v[:, None] & m_k[None, :]
        b_ht = tl.load(p_h + o_vk, mask=m_vk, other=0.0)  # [BV, BK]
        b_dht = tl.load(p_dh + o_vk, mask=m_vk, other=0.0)  # [BV, BK]
        b_ds += tl.dot(b_do, tl.trans(b_v))
        b_dq += tl.dot(b_do.to(b_ht.dtype), b_ht)
        b_dk += tl.dot(b_v.to(b_dht.dtype), b_dht)
    if HAS_DECAY:
        n = tl.minimum(BT, C - i_t * BT)
        b_dq *= tl.exp(ld * (o_t + 1).to(tl.float32))[:, None]  # lambda^(i+1)
        b_dk *= tl.where(o_t < n, tl.exp(ld * tl.maximum(n - 1 - o_t, 0).to(tl.float32)), 0.0)[:, None]
    b_ds = b_ds * _causal_decay(o_t, ld, HAS_DECAY, False)
    p_q = Q + (i_b.to(tl.int64) * C * H + i_h) * DK + rows[:, None] * (H * DK) + o_k[None, :]
    p_k = K + (i_b.to(tl.int64) * C * H + i_h) * DK + rows[:, None] * (H * DK) + o_k[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    b_q = tl.load(p_q, mask=m_tk, other=0.0)  # [BT, BK]
    b_k = tl.load(p_k, mask=m_tk, other=0.0)  # [BT, BK]
    b_dq += tl.dot(b_ds.to(b_k.dtype), b_k)
    b_dk += tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q)
    p_dq = DQ + (i_b.to(tl.int64) * C * H + i_h) * DK + rows[:, None] * (H * DK) + o_k[None, :]
    p_dk = DK_ + (i_b.to(tl.int64) * C * H + i_h) * DK + rows[:, None] * (H * DK) + o_k[None, :]
    tl.store(p_dq, b_dq.to(DQ.dtype.element_ty), mask=m_tk)
    tl.store(p_dk, b_dk.to(DK_.dtype.element_ty), mask=m_tk)


@triton.autotune(**_CHUNK)
@triton.jit(do_not_specialize=["C", "NT"])
def _bwd_dv_kernel(Q, K, DO, DHs, DV_, LD, C, NT, H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DECAY: tl.constexpr):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    rows = (i_t * BT + o_t).to(tl.int64)
    m_t = rows < C
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < DV
    ld = tl.load(LD + i_h).to(tl.float32) if HAS_DECAY else 0.0
    p_q = Q + (i_b.to(tl.int64) * C * H + i_h) * DK + rows * (H * DK)
    p_k = K + (i_b.to(tl.int64) * C * H + i_h) * DK + rows * (H * DK)
    p_dh = DHs + (i_bh.to(tl.int64) * NT + i_t) * DK * DV
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_a = tl.zeros([BT, BT], dtype=tl.float32)  # k_s . q_i, rows are keys
    for i_k in range(tl.cdiv(DK, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < DK
        b_k = tl.load(p_k[:, None] + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)  # [BT, BK]
        b_qt = tl.load(p_q[None, :] + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.0)  # [BK, BT]
        b_dh = tl.load(p_dh + o_k[:, None] * DV + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_a += tl.dot(b_k, b_qt)
        b_dv += tl.dot(b_k.to(b_dh.dtype), b_dh)
    if HAS_DECAY:
        n = tl.minimum(BT, C - i_t * BT)
        b_dv *= tl.where(o_t < n, tl.exp(ld * tl.maximum(n - 1 - o_t, 0).to(tl.float32)), 0.0)[:, None]
    b_a = b_a * _causal_decay(o_t, ld, HAS_DECAY, True)
    p_do = DO + (i_b.to(tl.int64) * C * H + i_h) * DV + rows[:, None] * (H * DV) + o_v[None, :]
    b_do = tl.load(p_do, mask=m_t[:, None] & m_v[None, :], other=0.0)  # [BT, BV]
    b_dv += tl.dot(b_a.to(b_do.dtype), b_do)
    p_dv = DV_ + (i_b.to(tl.int64) * C * H + i_h) * DV + rows[:, None] * (H * DV) + o_v[None, :]
    tl.store(p_dv, b_dv.to(DV_.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


# ------------------------------------------------------------------------------------------ host functions

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def chunk_size(block: int) -> int:
    """The Triton chunk ``BT`` for a requested ``block``: a power of two in [16, 64] (``tl.dot`` needs
    16 rows; 64 keeps the ``[BT, BT]`` tiles in registers)."""
    return max(16, min(triton.next_power_of_2(block), 64))


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _log_decay(log_decay, device):
    if log_decay is None:
        return torch.zeros(1, dtype=torch.float32, device=device)  # never read (HAS_DECAY=False)
    return log_decay.to(device=device, dtype=torch.float32).contiguous()


def _check(*ts):
    for t in ts:
        if t.dtype not in TRITON_DTYPES:
            raise TypeError(f"Triton linear-attention kernels take {TRITON_DTYPES}, got {t.dtype}")
    return [t.contiguous() for t in ts]


def chunk_fwd_h_triton(k, v, *, log_decay=None, bt: int = 64):
    """Triton :func:`.reference.chunk_fwd_h_torch`: ``h [B, H, NT, Dk, Dv]`` (bf16 for bf16 inputs,
    else fp32) and ``final [B, H, Dk, Dv]`` fp32."""
    k, v = _check(k, v)
    b, c, nh, dk = k.shape
    dv = v.shape[-1]
    nt = triton.cdiv(c, bt)
    h = torch.empty(b, nh, nt, dk, dv, dtype=_state_dtype(k.dtype), device=k.device)
    final = torch.empty(b, nh, dk, dv, dtype=torch.float32, device=k.device)
    grid = lambda meta: (triton.cdiv(dk, meta["BK"]), triton.cdiv(dv, meta["BV"]), b * nh)
    _fwd_h_kernel[grid](k, v, h, final, _log_decay(log_decay, k.device), c, nt, H=nh, DK=dk, DV=dv, BT=bt,
                        HAS_DECAY=log_decay is not None)
    return h, final


def chunk_fwd_o_triton(q, k, v, h, *, log_decay=None, bt: int = 64, out_dtype=torch.float32):
    """Triton :func:`.reference.chunk_fwd_o_torch`: ``[B, C, H, Dv]`` in ``out_dtype``."""
    q, k, v = _check(q, k, v)
    b, c, nh, dk = q.shape
    dv = v.shape[-1]
    out = torch.empty(b, c, nh, dv, dtype=out_dtype, device=q.device)
    grid = lambda meta: (triton.cdiv(dv, meta["BV"]), triton.cdiv(c, bt), b * nh)
    _fwd_o_kernel[grid](q, k, v, h, out, _log_decay(log_decay, q.device), c, h.shape[2], H=nh, DK=dk, DV=dv,
                        BT=bt, HAS_DECAY=log_decay is not None)
    return out


def chunk_bwd_dh_triton(q, do, *, log_decay=None, bt: int = 64):
    """Triton :func:`.reference.chunk_bwd_dh_torch`: ``dh [B, H, NT, Dk, Dv]`` and ``g [B, H, Dk, Dv]``
    fp32."""
    q, do = _check(q, do.to(q.dtype))
    b, c, nh, dk = q.shape
    dv = do.shape[-1]
    nt = triton.cdiv(c, bt)
    dh = torch.empty(b, nh, nt, dk, dv, dtype=_state_dtype(q.dtype), device=q.device)
    g = torch.empty(b, nh, dk, dv, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(dk, meta["BK"]), triton.cdiv(dv, meta["BV"]), b * nh)
    _bwd_dh_kernel[grid](q, do, dh, g, _log_decay(log_decay, q.device), c, nt, H=nh, DK=dk, DV=dv, BT=bt,
                         HAS_DECAY=log_decay is not None)
    return dh, g


def chunk_bwd_dqkv_triton(q, k, v, do, h, dh, *, log_decay=None, bt: int = 64, out_dtype=torch.float32):
    """Triton :func:`.reference.chunk_bwd_dqkv_torch`: ``dq, dk, dv`` in ``out_dtype``."""
    q, k, v, do = _check(q, k, v, do.to(v.dtype))
    b, c, nh, dk = q.shape
    dv = v.shape[-1]
    nt, ld = h.shape[2], _log_decay(log_decay, q.device)
    dq = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    dkk = torch.empty(k.shape, dtype=out_dtype, device=q.device)
    dvv = torch.empty(v.shape, dtype=out_dtype, device=q.device)
    kw = {"H": nh, "DK": dk, "DV": dv, "BT": bt, "HAS_DECAY": log_decay is not None}
    grid_k = lambda meta: (triton.cdiv(dk, meta["BK"]), nt, b * nh)
    _bwd_dqk_kernel[grid_k](q, k, v, do, h, dh, dq, dkk, ld, c, nt, **kw)
    grid_v = lambda meta: (triton.cdiv(dv, meta["BV"]), nt, b * nh)
    _bwd_dv_kernel[grid_v](q, k, do, dh, dvv, ld, c, nt, **kw)
    return dq, dkk, dvv
