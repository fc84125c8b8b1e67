"""Triton block attention (FlashAttention-2 structure) with the package's mask algebra, shaped for
ring steps: one launch per (query shard, key shard) pair, merge and gradient accumulation in-kernel.

Kernels (launch configs from :mod:`.configs`, one table shared with the compile gate):

- ``_fwd_kernel``: one program per (query tile, batch x head); online softmax over the key tiles,
  fp32 accumulation. With ``first=0`` it reads the running fp32 ``(out, lse)`` of its rows and
  writes the merged result (a ring step is one launch); rows that see no key of this block are left
  untouched. With ``first=1`` it writes ``(out, lse)`` (rows with no visible key: out 0, lse -inf).
- ``_bwd_preprocess_kernel``: ``delta = rowsum(dout * out)`` once per call.
- ``_bwd_dq_kernel`` (per query tile) and ``_bwd_dkdv_kernel`` (per key tile, looping over the G
  query heads of its kv head: GQA without atomics): with ``accumulate=1`` they add into the given
  fp32 gradients (dQ across a ring's steps, dK/dV into the travelling accumulator).

Mask: query row i sits at global position ``qpos[i]``, key j at ``kpos[j]``, either ``offset + index``
(``POS=False``, a contiguous span) or read from int32 position arrays (``POS=True``: any list of
spans, e.g. a zigzag or per-document shard, so a whole shard is one launch). ``causal`` keeps
``kpos <= qpos``, the window ``(left, right)`` (runtime values, -1 = unbounded) keeps
``qpos - left <= kpos <= qpos + right``, documents (per-row int32 ids) keep equal ids. Every tile pair
is classified from its tiles' position and document ranges (per-tile ``[min, max]``, from the
arrays ``QMETA``/``KMETA`` or computed for a contiguous span): invisible pairs are skipped, pairs
that are entirely visible take the mask-free path, only boundary pairs evaluate the mask.
Lengths, offsets, windows and flags that change between ring steps are runtime arguments, not
specialized (``do_not_specialize``): a ring call compiles each kernel once.

Head dims that are not powers of two are padded with masked lanes. fp32 inputs use IEEE fp32
``tl.dot`` (no TF32). Shapes and semantics are those of :mod:`.reference`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..backend import cdiv, next_pow2
from ..device_cache import DeviceCache
from ..launch import prepared
from .configs import current_arch, pick

_RUNTIME = ["Sq", "Sk", "q_offset", "k_offset", "left", "right", "first"]


@triton.jit
def _classify(qlo, qhi, qdlo, qdhi, klo, khi, kdlo, kdhi, left, right, CAUSAL: tl.constexpr,
              HAS_DOCS: tl.constexpr):
    """(skip, full) for a query tile with positions in [qlo, qhi] and docs in [qdlo, qdhi] against a key
    tile [klo, khi], [kdlo, kdhi]: skip = no pair visible, full = every pair visible."""
    dmin = klo - qhi  # range of kpos - qpos
    dmax = khi - qlo
    skip = dmin > dmax  # False (an empty tile never reaches here)
    full = dmin <= dmax  # True
    if CAUSAL:
        skip = skip | (dmin > 0)
        full = full & (dmax <= 0)
    skip = skip | ((right >= 0) & (dmin > right))
    full = full & ((right < 0) | (dmax <= right))
    skip = skip | ((left >= 0) & (dmax < -left))
    full = full & ((left < 0) | (dmin >= -left))
    if HAS_DOCS:
        skip = skip | (qdhi < kdlo) | (kdhi < qdlo)
        full = full & (qdlo == qdhi) & (kdlo == kdhi) & (qdlo == kdlo)
    return skip, full


@triton.jit
def _visible(qpos, kpos, qdoc, kdoc, k_valid, left, right, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr):
    m = k_valid[None, :] & (qpos[:, None] == qpos[:, None])  # [BM, BN]
    if CAUSAL:
        m = m & (kpos[None, :] <= qpos[:, None])
    m = m & ((left < 0) | (kpos[None, :] >= qpos[:, None] - left))
    m = m & ((right < 0) | (kpos[None, :] <= qpos[:, None] + right))
    if HAS_DOCS:
        m = m & (kdoc[None, :] == qdoc[:, None])
    return m


@triton.jit
def _tile_range(POS_, DOC, META, start, n, offset, B: tl.constexpr, POS: tl.constexpr, HAS_DOCS: tl.constexpr):
    """(pos min, pos max, doc min, doc max) of rows [start, start + B) clipped to n."""
    if POS:
        p = META + (start // B) * 4
        plo = tl.load(p)
        phi = tl.load(p + 1)
        dlo = tl.load(p + 2)
        dhi = tl.load(p + 3)
    else:
        last = tl.minimum(start + B, n) - 1
        plo = offset + start
        phi = offset + last
        dlo = plo * 0
        dhi = plo * 0
        if HAS_DOCS:
            dlo = tl.load(DOC + start)
            dhi = tl.load(DOC + last)
    return plo, phi, dlo, dhi


@triton.jit
def _rows(POS_, DOC, o, valid, offset, POS: tl.constexpr, HAS_DOCS: tl.constexpr, OTHER: tl.constexpr):
    """Global positions and document ids of rows ``o``."""
    if POS:
        pos = tl.load(POS_ + o, mask=valid, other=0)
    else:
        pos = offset + o
    if HAS_DOCS:
        doc = tl.load(DOC + o, mask=valid, other=OTHER)
    else:
        doc = o
    return pos, doc


@triton.jit
def _key_span(q_lo, q_hi, Sk, k_offset, left, right, BN: tl.constexpr, CAUSAL: tl.constexpr, POS: tl.constexpr):
    """Key rows ``[lo, hi)`` the mask can reach from query positions [q_lo, q_hi] (contiguous keys)."""
    lo = Sk * 0
    hi = Sk + 0
    if not POS:
        if CAUSAL:
            hi = tl.minimum(hi, q_hi + 1 - k_offset)
        if right >= 0:
            hi = tl.minimum(hi, q_hi + right + 1 - k_offset)
        if left >= 0:
            lo = tl.maximum(lo, q_lo - left - k_offset)
            lo = (lo // BN) * BN
    return lo, hi


@triton.jit
def _load_rows(P, b, h, o, valid, sb, ss, sh, DIM: tl.constexpr, BDIM: tl.constexpr):
    """The ``[len(o), BDIM]`` tile of rows ``o`` (masked by ``valid`` and ``DIM``) of batch ``b``, head ``h``
    of a ``[B, S, H, DIM]`` tensor with strides ``(sb, ss, sh, 1)``; 0 where masked."""
    o_d = tl.arange(0, BDIM)
    return tl.load(P + b.to(tl.int64) * sb + h * sh + o[:, None].to(tl.int64) * ss + o_d[None, :],
                   mask=valid[:, None] & (o_d[None, :] < DIM), other=0.0)


@triton.jit
def _dout_rows(DO, LSE, DELTA, b, h, o_m, m_valid, sdb, sds, sdh, slb, slh, seb, seh, DV: tl.constexpr,
               BDV: tl.constexpr):
    """dO ``[BM, BDV]``, lse (``+inf`` on rows that saw no key, so that ``p = 0``) and delta of query rows ``o_m``."""
    b_do = _load_rows(DO, b, h, o_m, m_valid, sdb, sds, sdh, DV, BDV)
    lse = tl.load(LSE + b.to(tl.int64) * slb + h * slh + o_m, mask=m_valid, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(DELTA + b.to(tl.int64) * seb + h * seh + o_m, mask=m_valid, other=0.0)
    return b_do, lse, delta


@triton.jit
def _key_tile(KPOS, KDOC, KMETA, start_n, Sk, k_offset, qlo, qhi, qdlo, qdhi, left, right, BN: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, POS: tl.constexpr):
    """Key tile ``[start_n, start_n + BN)`` against a query tile's ranges: ``skip`` (fully masked),
    ``full`` (fully visible)."""
    klo, khi, kdlo, kdhi = _tile_range(KPOS, KDOC, KMETA, start_n, Sk, k_offset, BN, POS, HAS_DOCS)
    return _classify(qlo, qhi, qdlo, qdhi, klo, khi, kdlo, kdhi, left, right, CAUSAL, HAS_DOCS)


@triton.jit
def _mask_scores(b_s, full, start_n, o_n, n_valid, qpos, qdoc, KPOS, KDOC, Sk, k_offset, left, right,
                 BN: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, POS: tl.constexpr):
    """Scores ``[BM, BN]`` with -inf where the mask hides the key; evaluated on boundary tiles only."""
    if (not full) | (start_n + BN > Sk):
        kpos, kdoc = _rows(KPOS, KDOC, o_n, n_valid, k_offset, POS, HAS_DOCS, -2)
        vis = _visible(qpos, kpos, qdoc, kdoc, n_valid, left, right, CAUSAL, HAS_DOCS)
        b_s = tl.where(vis, b_s, float("-inf"))
    return b_s


@triton.jit
def _query_tile(Q, QPOS, QDOC, QMETA, sqb, sqs, sqh, H, G, Sq, Sk, q_offset, k_offset, left, right,
                D: tl.constexpr, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr,
                HAS_DOCS: tl.constexpr, POS: tl.constexpr):
    """The query side of a (query tile, head) program (grid: query tiles x B*H): batch, head, kv head,
    rows ``o_m`` and their validity, the ``[BM, BD]`` query tile, the rows' positions and documents,
    the tile's position/document range and the key rows ``[lo, hi)`` the mask can reach."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    start_m = pid_m * BM
    o_m = start_m + tl.arange(0, BM)  # [BM]
    m_valid = o_m < Sq
    b_q = _load_rows(Q, b, h, o_m, m_valid, sqb, sqs, sqh, D, BD)  # [BM, BD]
    qpos, qdoc = _rows(QPOS, QDOC, o_m, m_valid, q_offset, POS, HAS_DOCS, -1)
    qlo, qhi, qdlo, qdhi = _tile_range(QPOS, QDOC, QMETA, start_m, Sq, q_offset, BM, POS, HAS_DOCS)
    lo, hi = _key_span(qlo, qhi, Sk, k_offset, left, right, BN, CAUSAL, POS)
    return b, h, hk, o_m, m_valid, b_q, qpos, qdoc, qlo, qhi, qdlo, qdhi, lo, hi


@triton.jit(do_not_specialize=_RUNTIME)
def _fwd_kernel(Q, K, V, O, LSE, QPOS, KPOS, QDOC, KDOC, QMETA, KMETA,
                sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh, slb, slh,
                H, G, Sq, Sk, q_offset, k_offset, left, right, scale, first,
                D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                POS: tl.constexpr, PREC: tl.constexpr):
    b, h, hk, o_m, m_valid, b_q, qpos, qdoc, qlo, qhi, qdlo, qdhi, lo, hi = _query_tile(
        Q, QPOS, QDOC, QMETA, sqb, sqs, sqh, H, G, Sq, Sk, q_offset, k_offset, left, right, D, BD, BM, BN, CAUSAL,
        HAS_DOCS, POS)
    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    p_o = O + b.to(tl.int64) * sob + h * soh + o_m[:, None].to(tl.int64) * sos + o_dv[None, :]
    p_l = LSE + b.to(tl.int64) * slb + h * slh + o_m
    o_mask = m_valid[:, None] & (o_dv[None, :] < DV)
    # online-softmax state (running max m in log2 units, sum l, unnormalised acc); merging into the
    # running (out, lse) = starting from the state (m = lse * log2(e), l = 1, acc = out)
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, BDV], tl.float32)
    l_old = b_m
    if first == 0:
        l_old = tl.load(p_l, mask=m_valid, other=float("-inf"))
        b_m = l_old * 1.4426950408889634
        b_l = tl.where(l_old == float("-inf"), 0.0, 1.0)
        b_acc = tl.load(p_o, mask=o_mask, other=0.0).to(tl.float32)
    l_start = b_l
    qk_scale = scale * 1.4426950408889634
    for start_n in range(lo, hi, BN):
        skip, full = _key_tile(KPOS, KDOC, KMETA, start_n, Sk, k_offset, qlo, qhi, qdlo, qdhi, left, right, BN,
                               CAUSAL, HAS_DOCS, POS)
        if not skip:
            o_n = start_n + tl.arange(0, BN)
            n_valid = o_n < Sk
            p_k = K + b.to(tl.int64) * skb + hk * skh + o_n[None, :].to(tl.int64) * sks + o_d[:, None]
            b_kt = tl.load(p_k, mask=n_valid[None, :] & (o_d[:, None] < D), other=0.0)  # [BD, BN]
            b_s = tl.dot(b_q, b_kt, input_precision=PREC) * qk_scale  # [BM, BN], log2 units
            b_s = _mask_scores(b_s, full, start_n, o_n, n_valid, qpos, qdoc, KPOS, KDOC, Sk, k_offset, left, right,
                               BN, CAUSAL, HAS_DOCS, POS)
            m_new = tl.maximum(b_m, tl.max(b_s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            b_p = tl.exp2(b_s - m_safe[:, None])  # [BM, BN]
            alpha = tl.exp2(b_m - m_safe)
            b_l = b_l * alpha + tl.sum(b_p, 1)
            b_v = _load_rows(V, b, hk, o_n, n_valid, svb, svs, svh, DV, BDV)  # [BN, BDV]
            b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PREC)
            b_m = m_new
    empty = b_l == 0.0
    b_out = b_acc / tl.where(empty, 1.0, b_l)[:, None]  # [BM, BDV]
    b_lse = tl.where(empty, float("-inf"), (b_m + tl.log2(tl.where(empty, 1.0, b_l))) * 0.6931471805599453)
    b_lse = tl.where(b_l == l_start, l_old, b_lse)  # rows that saw no key of this block: lse unchanged
    tl.store(p_o, b_out.to(O.dtype.element_ty), mask=o_mask)
    tl.store(p_l, b_lse, mask=m_valid)


@triton.jit
def _bwd_preprocess_kernel(O, DO, DELTA, sob, sos, soh, sdb, sds, sdh, H, S,
                           DV: tl.constexpr, BDV: tl.constexpr, BM: tl.constexpr):
    """``delta[b, h, i] = sum_d out[b, i, h, d] * dout[b, i, h, d]`` in fp32, ``DELTA`` ``[B, H, S]``."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    o_m = pid_m * BM + tl.arange(0, BM)
    o_dv = tl.arange(0, BDV)
    msk = (o_m[:, None] < S) & (o_dv[None, :] < DV)
    b_o = tl.load(O + b.to(tl.int64) * sob + h * soh + o_m[:, None].to(tl.int64) * sos + o_dv[None, :],
                  mask=msk, other=0.0).to(tl.float32)  # [BM, BDV]
    b_do = tl.load(DO + b.to(tl.int64) * sdb + h * sdh + o_m[:, None].to(tl.int64) * sds + o_dv[None, :],
                   mask=msk, other=0.0).to(tl.float32)  # [BM, BDV]
    tl.store(DELTA + bh.to(tl.int64) * S + o_m, tl.sum(b_o * b_do, 1), mask=o_m < S)


@triton.jit(do_not_specialize=_RUNTIME)
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, QPOS, KPOS, QDOC, KDOC, QMETA, KMETA,
                   sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdb, sds, sdh, sgb, sgs, sgh, slb, slh, seb, seh,
                   H, G, Sq, Sk, q_offset, k_offset, left, right, scale, first,
                   D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                   POS: tl.constexpr, PREC: tl.constexpr):
    """dQ of a query tile; ``first=0`` adds into ``DQ`` (fp32 accumulation across ring steps)."""
    b, h, hk, o_m, m_valid, b_q, qpos, qdoc, qlo, qhi, qdlo, qdhi, lo, hi = _query_tile(
        Q, QPOS, QDOC, QMETA, sqb, sqs, sqh, H, G, Sq, Sk, q_offset, k_offset, left, right, D, BD, BM, BN, CAUSAL,
        HAS_DOCS, POS)
    b_do, lse, delta = _dout_rows(DO, LSE, DELTA, b, h, o_m, m_valid, sdb, sds, sdh, slb, slh, seb, seh, DV, BDV)
    b_dq = tl.zeros([BM, BD], tl.float32)
    for start_n in range(lo, hi, BN):
        skip, full = _key_tile(KPOS, KDOC, KMETA, start_n, Sk, k_offset, qlo, qhi, qdlo, qdhi, left, right, BN,
                               CAUSAL, HAS_DOCS, POS)
        if not skip:
            o_n = start_n + tl.arange(0, BN)
            n_valid = o_n < Sk
            b_k = _load_rows(K, b, hk, o_n, n_valid, skb, sks, skh, D, BD)  # [BN, BD]
            b_v = _load_rows(V, b, hk, o_n, n_valid, svb, svs, svh, DV, BDV)  # [BN, BDV]
            b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale  # [BM, BN]
            b_s = _mask_scores(b_s, full, start_n, o_n, n_valid, qpos, qdoc, KPOS, KDOC, Sk, k_offset, left, right,
                               BN, CAUSAL, HAS_DOCS, POS)
            b_p = tl.exp(b_s - lse[:, None])  # [BM, BN]
            b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)  # [BM, BN]
            b_ds = b_p * (b_dp - delta[:, None])
            b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=PREC)
    b_dq = b_dq * scale
    o_d = tl.arange(0, BD)
    p_dq = DQ + b.to(tl.int64) * sgb + h * sgh + o_m[:, None].to(tl.int64) * sgs + o_d[None, :]
    dq_mask = m_valid[:, None] & (o_d[None, :] < D)
    if first == 0:
        b_dq += tl.load(p_dq, mask=dq_mask, other=0.0).to(tl.float32)
    tl.store(p_dq, b_dq.to(DQ.dtype.element_ty), mask=dq_mask)


@triton.jit(do_not_specialize=_RUNTIME)
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV_, QPOS, KPOS, QDOC, KDOC, QMETA, KMETA,
                     sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdb, sds, sdh,
                     sgkb, sgks, sgkh, sgvb, sgvs, sgvh, slb, slh, seb, seh,
                     H, G, Sq, Sk, q_offset, k_offset, left, right, scale, first,
                     D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr,
                     POS: tl.constexpr, PREC: tl.constexpr):
    """dK, dV of a key tile over the G query heads of its kv head; ``first=0`` adds into ``DK``/``DV_``."""
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    HK = H // G
    b = bhk // HK
    hk = bhk % HK
    start_n = pid_n * BN
    o_n = start_n + tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    n_valid = o_n < Sk
    b_k = _load_rows(K, b, hk, o_n, n_valid, skb, sks, skh, D, BD)  # [BN, BD]
    b_v = _load_rows(V, b, hk, o_n, n_valid, svb, svs, svh, DV, BDV)  # [BN, BDV]
    kpos, kdoc = _rows(KPOS, KDOC, o_n, n_valid, k_offset, POS, HAS_DOCS, -2)
    klo, khi, kdlo, kdhi = _tile_range(KPOS, KDOC, KMETA, start_n, Sk, k_offset, BN, POS, HAS_DOCS)
    lo = Sq * 0
    hi = Sq + 0
    if not POS:  # query rows the mask can reach (contiguous queries)
        if CAUSAL:
            lo = tl.maximum(lo, klo - q_offset)
        if right >= 0:
            lo = tl.maximum(lo, klo - right - q_offset)
        if left >= 0:
            hi = tl.minimum(hi, khi + left + 1 - q_offset)
        lo = (lo // BM) * BM
    b_dk = tl.zeros([BN, BD], tl.float32)
    b_dv = tl.zeros([BN, BDV], tl.float32)
    for g in range(0, G):
        h = hk * G + g
        for start_m in range(lo, hi, BM):
            qlo, qhi, qdlo, qdhi = _tile_range(QPOS, QDOC, QMETA, start_m, Sq, q_offset, BM, POS, HAS_DOCS)
            skip, full = _classify(qlo, qhi, qdlo, qdhi, klo, khi, kdlo, kdhi, left, right, CAUSAL, HAS_DOCS)
            if not skip:
                o_m = start_m + tl.arange(0, BM)
                m_valid = o_m < Sq
                b_q = _load_rows(Q, b, h, o_m, m_valid, sqb, sqs, sqh, D, BD)  # [BM, BD]
                b_do, lse, delta = _dout_rows(DO, LSE, DELTA, b, h, o_m, m_valid, sdb, sds, sdh, slb, slh, seb, seh,
                                              DV, BDV)
                b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale  # [BM, BN]
                if (not full) | (start_n + BN > Sk):
                    qpos, qdoc = _rows(QPOS, QDOC, o_m, m_valid, q_offset, POS, HAS_DOCS, -1)
                    vis = _visible(qpos, kpos, qdoc, kdoc, n_valid, left, right, CAUSAL, HAS_DOCS)
                    b_s = tl.where(vis, b_s, float("-inf"))
                b_p = tl.exp(b_s - lse[:, None])  # [BM, BN]; 0 on rows past Sq (lse = +inf)
                b_dv += tl.dot(tl.trans(b_p).to(b_do.dtype), b_do, input_precision=PREC)
                b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)  # [BM, BN]
                b_ds = b_p * (b_dp - delta[:, None])
                b_dk += tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q, input_precision=PREC)
    b_dk = b_dk * scale
    p_dk = DK + b.to(tl.int64) * sgkb + hk * sgkh + o_n[:, None].to(tl.int64) * sgks + o_d[None, :]
    p_dv = DV_ + b.to(tl.int64) * sgvb + hk * sgvh + o_n[:, None].to(tl.int64) * sgvs + o_dv[None, :]
    dk_mask = n_valid[:, None] & (o_d[None, :] < D)
    dv_mask = n_valid[:, None] & (o_dv[None, :] < DV)
    if first == 0:
        b_dk += tl.load(p_dk, mask=dk_mask, other=0.0).to(tl.float32)
        b_dv += tl.load(p_dv, mask=dv_mask, other=0.0).to(tl.float32)
    tl.store(p_dk, b_dk.to(DK.dtype.element_ty), mask=dk_mask)
    tl.store(p_dv, b_dv.to(DV_.dtype.element_ty), mask=dv_mask)


_KERNELS = {"fwd": _fwd_kernel, "bwd_dq": _bwd_dq_kernel, "bwd_dkdv": _bwd_dkdv_kernel}


# ---------------------------------------------------------------- argument types (for the compile gate)

def _types(names: str, **kinds) -> dict:
    out = {}
    for n in names.split():
        out[n] = kinds.get(n, "i32")
    return out


_STRIDES_FWD = "sqb sqs sqh skb sks skh svb svs svh sob sos soh slb slh"
_STRIDES_DQ = "sqb sqs sqh skb sks skh svb svs svh sdb sds sdh sgb sgs sgh slb slh seb seh"
_STRIDES_DKDV = "sqb sqs sqh skb sks skh svb svs svh sdb sds sdh sgkb sgks sgkh sgvb sgvs sgvh slb slh seb seh"
_SCALARS = "H G Sq Sk q_offset k_offset left right scale first"


def _fwd_types(p, f32, i32):
    return _types("Q K V O LSE QPOS KPOS QDOC KDOC QMETA KMETA " + _STRIDES_FWD + " " + _SCALARS,
                  Q=p, K=p, V=p, O=f32, LSE=f32, QPOS=i32, KPOS=i32, QDOC=i32, KDOC=i32, QMETA=i32, KMETA=i32,
                  scale="fp32")


def _pre_types(p, f32, i32):
    return _types("O DO DELTA sob sos soh sdb sds sdh H S", O=f32, DO=p, DELTA=f32)


def _dq_types(p, f32, i32):
    return _types("Q K V DO LSE DELTA DQ QPOS KPOS QDOC KDOC QMETA KMETA " + _STRIDES_DQ + " " + _SCALARS,
                  Q=p, K=p, V=p, DO=p, LSE=f32, DELTA=f32, DQ=f32, QPOS=i32, KPOS=i32, QDOC=i32, KDOC=i32,
                  QMETA=i32, KMETA=i32, scale="fp32")


def _dkdv_types(p, f32, i32):
    return _types("Q K V DO LSE DELTA DK DV_ QPOS KPOS QDOC KDOC QMETA KMETA " + _STRIDES_DKDV + " " + _SCALARS,
                  Q=p, K=p, V=p, DO=p, LSE=f32, DELTA=f32, DK=f32, DV_=f32, QPOS=i32, KPOS=i32, QDOC=i32,
                  KDOC=i32, QMETA=i32, KMETA=i32, scale="fp32")


# Triton types of every non-constexpr argument, as the wrappers below pass them: inputs in the input
# dtype ``p``; out/lse/delta and the gradient accumulators of the ring in fp32 (the per-block API may
# also write ``out``/gradients in the input dtype: same code, smaller tiles in registers)
ARG_TYPES = {"fwd": _fwd_types, "bwd_preprocess": _pre_types, "bwd_dq": _dq_types, "bwd_dkdv": _dkdv_types}


def _prec(dtype) -> str:
    return "ieee" if dtype in (torch.float32, "fp32") else "tf32"


def gate_constexprs(kernel: str, d: int, dv: int, cfg, dtype="bf16") -> list[tuple[str, dict]]:
    """Constexpr sets the wrappers pass for ``kernel`` at head dims ``d``/``dv`` with config ``cfg``:
    the mask-free block and the heaviest mask variant (causal, documents, span positions)."""
    bd, bdv = next_pow2(max(d, 16)), next_pow2(max(dv, 16))
    if kernel == "bwd_preprocess":
        return [("none", dict(DV=dv, BDV=bdv, BM=cfg.block_m))]
    base = dict(D=d, DV=dv, BD=bd, BDV=bdv, BM=cfg.block_m, BN=cfg.block_n, PREC=_prec(dtype))
    return [("none", dict(base, CAUSAL=False, HAS_DOCS=False, POS=False)),
            ("causal+docs+pos", dict(base, CAUSAL=True, HAS_DOCS=True, POS=True))]


# ---------------------------------------------------------------- host side

def _arch(t: torch.Tensor):
    return current_arch(t.device) if t.is_cuda else "interpret"


def _doc_ids(cu_seqlens, offset, n, device):
    """Document ids (int32 ``[n]``) of positions ``offset ..``: from a tensor on its device, from host
    boundaries (list/tuple) those of the cached :class:`Positions` of that span (no copy per launch)."""
    if cu_seqlens is None:
        return None
    if isinstance(cu_seqlens, torch.Tensor):
        cu = torch.as_tensor(cu_seqlens, device=device)
        pos = torch.arange(offset, offset + n, device=device)
        return torch.searchsorted(cu, pos, right=True).to(torch.int32)
    return cached_positions(((int(offset), int(n)),), tuple(int(c) for c in cu_seqlens), str(device)).doc


class Positions:
    """Global positions of a shard's rows as the kernels read them: ``pos`` (int32 ``[n]``), ``doc``
    (int32 document ids or ``None``) and per-tile ``[pos min, pos max, doc min, doc max]`` tables
    (:meth:`meta`, cached per tile height). Build once per (spans, cu_seqlens, device) and reuse."""

    def __init__(self, spans, cu_seqlens, device):
        pos = torch.cat([torch.arange(s, s + n, dtype=torch.int64) for s, n in spans]) if spans else \
            torch.zeros(0, dtype=torch.int64)
        self.n = int(pos.numel())
        self._pos64 = pos
        self.pos = pos.to(torch.int32).to(device)
        if cu_seqlens is None:
            self._doc64 = torch.zeros_like(pos)
            self.doc = None
        else:
            self._doc64 = torch.searchsorted(torch.as_tensor(cu_seqlens, dtype=torch.int64), pos, right=True)
            self.doc = self._doc64.to(torch.int32).to(device)
        self.device = device
        self._meta = {}

    def meta(self, block: int) -> torch.Tensor:
        m = self._meta.get(block)
        if m is None:
            nb = max(1, -(-self.n // block))
            pad = nb * block - self.n
            pos, doc = self._pos64, self._doc64
            if self.n == 0:
                m = torch.zeros(1, 4, dtype=torch.int32)
            else:
                def tiles(x, fill):
                    return torch.cat([x, x.new_full((pad,), fill)]).view(nb, block)
                m = torch.stack([tiles(pos, 2 ** 62).amin(1), tiles(pos, -2 ** 62).amax(1),
                                 tiles(doc, 2 ** 62).amin(1), tiles(doc, -2 ** 62).amax(1)], 1).to(torch.int32)
            m = m.contiguous().to(self.device)
            self._meta[block] = m
        return m


# cached_positions(spans, cu_seqlens, device): the Positions of ``spans`` (a tuple of ``(start, length)``)
# and ``cu_seqlens`` (a tuple or None) on ``device`` (a str), built and uploaded once and reused (at most
# 1024 kept; those a CUDA graph capture used are kept for good: a replay never reads a freed table)
cached_positions = DeviceCache(lambda spans, cu_seqlens, device: Positions(spans, cu_seqlens, torch.device(device)),
                               maxsize=1024)


def _s3(t: torch.Tensor) -> tuple:
    """The batch, row and head strides of a ``[B, S, H, D]`` tensor (one host call)."""
    return t.stride()[:3]


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride()[-1] == 1 else t.contiguous()


def _geometry(q, k, v):
    b, sq, h, d = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    return b, sq, h, d, sk, hk, dv


_dummies: dict = {}


def _dummy(device) -> torch.Tensor:
    """A 1-element int32 tensor per device for the pointer arguments a variant never reads (allocated
    once, so a launch allocates nothing for them)."""
    t = _dummies.get(device)
    if t is None:
        t = _dummies[device] = torch.empty(1, dtype=torch.int32, device=device)
    return t


class ShardKernels:
    """The attention kernels of one query shard, prepared once for many key/value blocks (a ring call):
    launch configs, constexprs, the query side's strides and mask arguments (and, for the backward,
    those of ``dout``/``lse``/``delta``) are computed on the first launch of each kernel, so a ring
    step costs its argument tuple and the Triton launch (the host time a GPU ring waits on).

    ``q`` ``[B, Sq, H, D]``; blocks of ``hk`` key/value heads and value dim ``dv``. The mask: ``q_pos``
    (:class:`Positions`; every launch then passes the block's ``k_pos``) or ``q_offset`` with
    ``cu_seqlens`` (launches pass ``k_offset``). ``first=True`` writes the results, ``False`` merges
    (forward) or adds (backward) into them. Backward launches need ``dout``, ``lse`` and ``delta``."""

    def __init__(self, q, *, hk, dv, softmax_scale=None, causal=False, window=(-1, -1), q_pos=None, q_offset=0,
                 cu_seqlens=None, dout=None, lse=None, delta=None):
        self.q = q = _unit_last(q)
        self.b, self.sq, self.h, self.d = q.shape
        self.hk, self.dv, self.g = hk, dv, self.h // hk
        self.scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(self.d)
        self.causal, self.window = bool(causal), (int(window[0]), int(window[1]))
        self.arch, self.dtype, self.device = _arch(q), q.dtype, q.device
        self.q_pos, self.q_offset, self.cu = q_pos, int(q_offset), cu_seqlens
        self.dummy = _dummy(q.device)
        qdoc = q_pos.doc if q_pos is not None else _doc_ids(cu_seqlens, q_offset, self.sq, q.device)
        self.has_docs = qdoc is not None
        self.qdoc = qdoc if self.has_docs else self.dummy
        self.q_strides = _s3(q)
        if dout is not None:
            self.dout = _unit_last(dout)
            self.lse, self.delta = lse, delta
            self.row_strides = _s3(self.dout)
            self.ls = (*lse.stride()[:2], *delta.stride()[:2])
        self._launches = {}

    def _prepare(self, kernel: str):
        p = self._launches.get(kernel)
        if p is None:
            cfg = pick(self.arch, kernel, self.dtype, max(self.d, self.dv))
            cx = dict(D=self.d, DV=self.dv, BD=next_pow2(max(self.d, 16)), BDV=next_pow2(max(self.dv, 16)),
                      BM=cfg.block_m, BN=cfg.block_n, CAUSAL=self.causal, HAS_DOCS=self.has_docs,
                      POS=self.q_pos is not None, PREC=_prec(self.dtype), num_warps=cfg.num_warps,
                      num_stages=cfg.num_stages)
            qmeta = self.q_pos.meta(cfg.block_m) if self.q_pos is not None else self.dummy
            p = self._launches[kernel] = (cfg, prepared(_KERNELS[kernel], **cx), qmeta)
        return p

    def _block(self, kernel: str, k, v, k_pos, k_offset) -> tuple:
        """``(cfg, prepared launch, k, v, mask pointers, runtime tail)`` of one launch of ``kernel`` on a block:
        the pointers are ``(QPOS, KPOS, QDOC, KDOC, QMETA, KMETA)``, the tail ``(H, G, Sq, Sk, q_offset,
        k_offset, left, right, scale)`` (the kernel's ``first`` flag follows it)."""
        cfg, launch, qmeta = self._prepare(kernel)
        sk = k.shape[1]
        if self.q_pos is not None:
            kdoc = k_pos.doc if self.has_docs else self.dummy
            ptrs, qo, ko = (self.q_pos.pos, k_pos.pos, self.qdoc, kdoc, qmeta, k_pos.meta(cfg.block_n)), 0, 0
        else:
            kdoc = _doc_ids(self.cu, k_offset, sk, self.device) if self.has_docs else self.dummy
            ptrs, qo, ko = (self.dummy, self.dummy, self.qdoc, kdoc, self.dummy, self.dummy), self.q_offset, k_offset
        tail = (self.h, self.g, self.sq, sk, qo, int(ko), *self.window, self.scale)
        return cfg, launch, _unit_last(k), _unit_last(v), ptrs, tail

    def fwd(self, k, v, out, lse, *, first, k_pos=None, k_offset=0) -> None:
        """Attention of the shard against one key/value block into the fp32 ``out``/``lse``."""
        cfg, launch, k, v, ptrs, tail = self._block("fwd", k, v, k_pos, k_offset)
        launch((cdiv(self.sq, cfg.block_m), self.b * self.h), (
            self.q, k, v, out, lse, *ptrs, *self.q_strides, *_s3(k), *_s3(v), *_s3(out), *lse.stride()[:2],
            *tail, 1 if first else 0))

    def dq(self, k, v, dq, *, first, k_pos=None, k_offset=0) -> None:
        """dQ of the shard from one key/value block, written (``first``) or added into ``dq``."""
        cfg, launch, k, v, ptrs, tail = self._block("bwd_dq", k, v, k_pos, k_offset)
        launch((cdiv(self.sq, cfg.block_m), self.b * self.h), (
            self.q, k, v, self.dout, self.lse, self.delta, dq, *ptrs, *self.q_strides, *_s3(k), *_s3(v),
            *self.row_strides, *_s3(dq), *self.ls, *tail, 1 if first else 0))

    def dkdv(self, k, v, dk, dv, *, first, k_pos=None, k_offset=0) -> None:
        """dK, dV of one key/value block from the shard, written (``first``) or added into ``dk``/``dv``."""
        cfg, launch, k, v, ptrs, tail = self._block("bwd_dkdv", k, v, k_pos, k_offset)
        launch((cdiv(k.shape[1], cfg.block_n), self.b * self.hk), (
            self.q, k, v, self.dout, self.lse, self.delta, dk, dv, *ptrs, *self.q_strides, *_s3(k), *_s3(v),
            *self.row_strides, *_s3(dk), *_s3(dv), *self.ls, *tail, 1 if first else 0))


def attention_block_fwd_triton(q, k, v, *, softmax_scale=None, causal=False, q_offset=0, k_offset=0,
                               window=(-1, -1), cu_seqlens=None, out_dtype=None, out=None, lse=None,
                               accumulate=None, q_pos=None, k_pos=None):
    """Triton forward; same contract as :func:`.reference.attention_block_fwd_torch`.

    With ``out`` (``[B, Sq, H, Dv]``, fp32) and ``lse`` (``[B, H, Sq]`` fp32, unit row stride) given, the
    block is merged into them in place (rows with no visible key untouched) and they are returned;
    ``accumulate=False`` overwrites them instead (the first block of a ring: no read, no fill).
    ``q_pos``/``k_pos`` (:class:`Positions`) replace the offsets (and ``cu_seqlens``) for shards made of
    several spans. A ring prepares :class:`ShardKernels` once instead."""
    b, sq, h, d, sk, hk, dv = _geometry(q, k, v)
    merge = (out is not None) if accumulate is None else bool(accumulate)
    if out is None:
        out = torch.empty(b, sq, h, dv, dtype=out_dtype or q.dtype, device=q.device)
        lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    if b * h * sq == 0:
        return out, lse
    ShardKernels(q, hk=hk, dv=dv, softmax_scale=softmax_scale, causal=causal, window=window, q_pos=q_pos,
                 q_offset=q_offset, cu_seqlens=cu_seqlens).fwd(k, v, out, lse, first=not merge, k_pos=k_pos,
                                                               k_offset=k_offset)
    return out, lse


def attention_delta_triton(out, dout) -> torch.Tensor:
    """``rowsum(dout * out)`` as fp32 ``[B, H, S]``: the backward's preprocess, one launch."""
    b, s, h, dv = out.shape
    delta = torch.empty(b, h, s, dtype=torch.float32, device=out.device)
    if delta.numel() == 0:
        return delta
    cfg = pick(_arch(out), "bwd_preprocess", dout.dtype, dv)
    out, dout = _unit_last(out), _unit_last(dout)
    launch = prepared(_bwd_preprocess_kernel, DV=dv, BDV=next_pow2(max(dv, 16)), BM=cfg.block_m,
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    launch((cdiv(s, cfg.block_m), b * h), (out, dout, delta, *_s3(out), *_s3(dout), h, s))
    return delta


def attention_block_bwd_triton(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False, q_offset=0,
                               k_offset=0, window=(-1, -1), cu_seqlens=None, delta=None, grad_dtype=None,
                               dq=None, dk=None, dv=None, accumulate=False, q_pos=None, k_pos=None, which="both"):
    """Triton backward; same contract as :func:`.reference.attention_block_bwd_torch`.

    With ``dq``, ``dk``, ``dv`` given (any strides, unit last stride) the gradients are written there, or
    added to them with ``accumulate=True`` (fp32 accumulation in-kernel); ``q_pos``/``k_pos`` as in
    :func:`attention_block_fwd_triton`; ``which`` (``"dq"``, ``"dkdv"``, ``"both"``) limits the launches
    to one of the two kernels (ring steps launch dQ before waiting for the travelling dK/dV).
    Returns ``(dq, dk, dv)`` (the ones not computed are returned as given)."""
    b, sq, h, d, sk, hk, dvd = _geometry(q, k, v)
    gd = grad_dtype or q.dtype
    if which in ("both", "dq") and dq is None:
        dq = torch.empty(q.shape, dtype=gd, device=q.device)
    if which in ("both", "dkdv") and dk is None:
        dk = torch.empty(k.shape, dtype=gd, device=q.device)
        dv = torch.empty(v.shape, dtype=gd, device=q.device)
    if b * h == 0 or (sq == 0 and sk == 0):
        return dq, dk, dv
    if delta is None:
        delta = attention_delta_triton(out, dout)
    shard = ShardKernels(q, hk=hk, dv=dvd, softmax_scale=softmax_scale, causal=causal, window=window, q_pos=q_pos,
                         q_offset=q_offset, cu_seqlens=cu_seqlens, dout=dout, lse=lse, delta=delta)
    first = not accumulate
    if which in ("both", "dkdv") and sk > 0:
        shard.dkdv(k, v, dk, dv, first=first, k_pos=k_pos, k_offset=k_offset)
    if which in ("both", "dq") and sq > 0:
        shard.dq(k, v, dq, first=first, k_pos=k_pos, k_offset=k_offset)
    return dq, dk, dv
