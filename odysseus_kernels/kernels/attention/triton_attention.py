"""Triton block attention (FlashAttention-2 structure) with the package's mask algebra.

Forward: one program per (query block, batch x head), online softmax over the key blocks the mask
can reach (causal / window bounds skip the rest), fp32 accumulation, ``out`` in ``out_dtype`` and
``lse`` in fp32 (natural log; -inf for rows that see no key, whose output is 0). Backward: a
dK/dV kernel per (key block, batch x kv head) that loops over the G query heads sharing the kv head
(GQA without atomics), and a dQ kernel per (query block, batch x head). Masks: ``causal`` and
``window`` over global positions ``q_offset + i`` / ``k_offset + j``, and documents of a packed
stream through per-row document ids. Head dims that are not powers of two are padded with masked
lanes. Shapes and semantics are those of :mod:`.reference`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _visible(qpos, kpos, qdoc, kdoc, k_valid, CAUSAL: tl.constexpr, LEFT: tl.constexpr, RIGHT: tl.constexpr,
             HAS_DOCS: tl.constexpr):
    m = k_valid[None, :] & (qpos[:, None] == qpos[:, None])  # [BM, BN]
    if CAUSAL:
        m = m & (kpos[None, :] <= qpos[:, None])
    if LEFT >= 0:
        m = m & (kpos[None, :] >= qpos[:, None] - LEFT)
    if RIGHT >= 0:
        m = m & (kpos[None, :] <= qpos[:, None] + RIGHT)
    if HAS_DOCS:
        m = m & (kdoc[None, :] == qdoc[:, None])
    return m


@triton.jit
def _key_range(pid_m, Sk, q_offset, k_offset, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr,
               LEFT: tl.constexpr, RIGHT: tl.constexpr):
    """Key rows ``[lo, hi)`` the mask can reach from query block ``pid_m`` (lo on a BN boundary)."""
    lo = 0
    hi = Sk
    if CAUSAL:
        hi = tl.minimum(Sk, q_offset + (pid_m + 1) * BM - k_offset)
    if RIGHT >= 0:
        hi = tl.minimum(hi, q_offset + (pid_m + 1) * BM + RIGHT - k_offset)
    if LEFT >= 0:
        lo = tl.maximum(0, q_offset + pid_m * BM - LEFT - k_offset)
        lo = (lo // BN) * BN
    return lo, hi


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, QDOC, KDOC,
                sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
                H, G, Sq, Sk, q_offset, k_offset, scale,
                D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr,
                RIGHT: tl.constexpr, HAS_DOCS: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    o_m = pid_m * BM + tl.arange(0, BM)  # [BM]
    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    m_valid = o_m < Sq
    p_q = Q + b.to(tl.int64) * sqb + h * sqh + o_m[:, None].to(tl.int64) * sqs + o_d[None, :]
    b_q = tl.load(p_q, mask=m_valid[:, None] & (o_d[None, :] < D), other=0.0)  # [BM, BD]
    qpos = q_offset + o_m
    qdoc = tl.load(QDOC + o_m, mask=m_valid, other=-1) if HAS_DOCS else o_m
    lo, hi = _key_range(pid_m, Sk, q_offset, k_offset, BM, BN, CAUSAL, LEFT, RIGHT)
    b_m = tl.full([BM], float("-inf"), tl.float32)
    b_l = tl.zeros([BM], tl.float32)
    b_acc = tl.zeros([BM, BDV], tl.float32)
    qk_scale = scale * 1.4426950408889634
    for start_n in range(lo, hi, BN):
        o_n = start_n + tl.arange(0, BN)
        n_valid = o_n < Sk
        p_k = K + b.to(tl.int64) * skb + hk * skh + o_n[None, :].to(tl.int64) * sks + o_d[:, None]
        b_kt = tl.load(p_k, mask=n_valid[None, :] & (o_d[:, None] < D), other=0.0)  # [BD, BN]
        b_s = tl.dot(b_q, b_kt) * qk_scale  # [BM, BN], log2 units
        kdoc = tl.load(KDOC + o_n, mask=n_valid, other=-2) if HAS_DOCS else o_n
        vis = _visible(qpos, k_offset + o_n, qdoc, kdoc, n_valid, CAUSAL, LEFT, RIGHT, HAS_DOCS)
        b_s = tl.where(vis, b_s, float("-inf"))
        m_new = tl.maximum(b_m, tl.max(b_s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        b_p = tl.exp2(b_s - m_safe[:, None])
        alpha = tl.exp2(b_m - m_safe)
        b_l = b_l * alpha + tl.sum(b_p, 1)
        p_v = V + b.to(tl.int64) * svb + hk * svh + o_n[:, None].to(tl.int64) * svs + o_dv[None, :]
        b_v = tl.load(p_v, mask=n_valid[:, None] & (o_dv[None, :] < DV), other=0.0)  # [BN, BDV]
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        b_m = m_new
    empty = b_l == 0.0
    b_out = b_acc / tl.where(empty, 1.0, b_l)[:, None]
    lse = tl.where(empty, float("-inf"), (b_m + tl.log2(tl.where(empty, 1.0, b_l))) * 0.6931471805599453)
    p_o = O + b.to(tl.int64) * sob + h * soh + o_m[:, None].to(tl.int64) * sos + o_dv[None, :]
    tl.store(p_o, b_out.to(O.dtype.element_ty), mask=m_valid[:, None] & (o_dv[None, :] < DV))
    tl.store(LSE + bh.to(tl.int64) * Sq + o_m, lse, mask=m_valid)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV_, QDOC, KDOC,
                     sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdb, sds, sdh,
                     H, G, Sq, Sk, q_offset, k_offset, scale,
                     D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr,
                     RIGHT: tl.constexpr, HAS_DOCS: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    HK = H // G
    b = bhk // HK
    hk = bhk % HK
    o_n = pid_n * BN + tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    n_valid = o_n < Sk
    b_k = tl.load(K + b.to(tl.int64) * skb + hk * skh + o_n[:, None].to(tl.int64) * sks + o_d[None, :],
                  mask=n_valid[:, None] & (o_d[None, :] < D), other=0.0)  # [BN, BD]
    b_v = tl.load(V + b.to(tl.int64) * svb + hk * svh + o_n[:, None].to(tl.int64) * svs + o_dv[None, :],
                  mask=n_valid[:, None] & (o_dv[None, :] < DV), other=0.0)  # [BN, BDV]
    kpos = k_offset + o_n
    kdoc = tl.load(KDOC + o_n, mask=n_valid, other=-2) if HAS_DOCS else o_n
    lo = 0
    hi = Sq
    if CAUSAL:
        lo = tl.maximum(0, k_offset + pid_n * BN - q_offset)
    if RIGHT >= 0:
        lo = tl.maximum(lo, k_offset + pid_n * BN - RIGHT - q_offset)
    if LEFT >= 0:
        hi = tl.minimum(Sq, k_offset + (pid_n + 1) * BN + LEFT - q_offset)
    lo = (lo // BM) * BM
    b_dk = tl.zeros([BN, BD], tl.float32)
    b_dv = tl.zeros([BN, BDV], tl.float32)
    for g in range(0, G):
        h = hk * G + g
        for start_m in range(lo, hi, BM):
            o_m = start_m + tl.arange(0, BM)
            m_valid = o_m < Sq
            b_q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + o_m[:, None].to(tl.int64) * sqs + o_d[None, :],
                          mask=m_valid[:, None] & (o_d[None, :] < D), other=0.0)  # [BM, BD]
            b_do = tl.load(DO + b.to(tl.int64) * sdb + h * sdh + o_m[:, None].to(tl.int64) * sds + o_dv[None, :],
                           mask=m_valid[:, None] & (o_dv[None, :] < DV), other=0.0)  # [BM, BDV]
            lse = tl.load(LSE + (b * H + h).to(tl.int64) * Sq + o_m, mask=m_valid, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)  # rows that saw no key: p = 0
            delta = tl.load(DELTA + (b * H + h).to(tl.int64) * Sq + o_m, mask=m_valid, other=0.0)
            qdoc = tl.load(QDOC + o_m, mask=m_valid, other=-1) if HAS_DOCS else o_m
            b_s = tl.dot(b_q, tl.trans(b_k)) * scale  # [BM, BN]
            vis = _visible(q_offset + o_m, kpos, qdoc, kdoc, n_valid, CAUSAL, LEFT, RIGHT, HAS_DOCS)
            vis = vis & m_valid[:, None]
            b_p = tl.where(vis, tl.exp(b_s - lse[:, None]), 0.0)  # [BM, BN]
            b_dv += tl.dot(tl.trans(b_p).to(b_do.dtype), b_do)
            b_dp = tl.dot(b_do, tl.trans(b_v))  # [BM, BN]
            b_ds = b_p * (b_dp - delta[:, None])
            b_dk += tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q)
    p_dk = DK + b.to(tl.int64) * skb + hk * skh + o_n[:, None].to(tl.int64) * sks + o_d[None, :]
    tl.store(p_dk, (b_dk * scale).to(DK.dtype.element_ty), mask=n_valid[:, None] & (o_d[None, :] < D))
    p_dv = DV_ + b.to(tl.int64) * svb + hk * svh + o_n[:, None].to(tl.int64) * svs + o_dv[None, :]
    tl.store(p_dv, b_dv.to(DV_.dtype.element_ty), mask=n_valid[:, None] & (o_dv[None, :] < DV))


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, QDOC, KDOC,
                   sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sdb, sds, sdh,
                   H, G, Sq, Sk, q_offset, k_offset, scale,
                   D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, LEFT: tl.constexpr,
                   RIGHT: tl.constexpr, HAS_DOCS: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    o_m = pid_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    o_dv = tl.arange(0, BDV)
    m_valid = o_m < Sq
    b_q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + o_m[:, None].to(tl.int64) * sqs + o_d[None, :],
                  mask=m_valid[:, None] & (o_d[None, :] < D), other=0.0)
    b_do = tl.load(DO + b.to(tl.int64) * sdb + h * sdh + o_m[:, None].to(tl.int64) * sds + o_dv[None, :],
                   mask=m_valid[:, None] & (o_dv[None, :] < DV), other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * Sq + o_m, mask=m_valid, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(DELTA + bh.to(tl.int64) * Sq + o_m, mask=m_valid, other=0.0)
    qpos = q_offset + o_m
    qdoc = tl.load(QDOC + o_m, mask=m_valid, other=-1) if HAS_DOCS else o_m
    lo, hi = _key_range(pid_m, Sk, q_offset, k_offset, BM, BN, CAUSAL, LEFT, RIGHT)
    b_dq = tl.zeros([BM, BD], tl.float32)
    for start_n in range(lo, hi, BN):
        o_n = start_n + tl.arange(0, BN)
        n_valid = o_n < Sk
        b_k = tl.load(K + b.to(tl.int64) * skb + hk * skh + o_n[:, None].to(tl.int64) * sks + o_d[None, :],
                      mask=n_valid[:, None] & (o_d[None, :] < D), other=0.0)  # [BN, BD]
        b_v = tl.load(V + b.to(tl.int64) * svb + hk * svh + o_n[:, None].to(tl.int64) * svs + o_dv[None, :],
                      mask=n_valid[:, None] & (o_dv[None, :] < DV), other=0.0)  # [BN, BDV]
        kdoc = tl.load(KDOC + o_n, mask=n_valid, other=-2) if HAS_DOCS else o_n
        b_s = tl.dot(b_q, tl.trans(b_k)) * scale
        vis = _visible(qpos, k_offset + o_n, qdoc, kdoc, n_valid, CAUSAL, LEFT, RIGHT, HAS_DOCS)
        b_p = tl.where(vis & m_valid[:, None], tl.exp(b_s - lse[:, None]), 0.0)
        b_dp = tl.dot(b_do, tl.trans(b_v))
        b_ds = b_p * (b_dp - delta[:, None])
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k)
    p_dq = DQ + b.to(tl.int64) * sqb + h * sqh + o_m[:, None].to(tl.int64) * sqs + o_d[None, :]
    tl.store(p_dq, (b_dq * scale).to(DQ.dtype.element_ty), mask=m_valid[:, None] & (o_d[None, :] < D))


def _docs(cu_seqlens, offset, n, device):
    if cu_seqlens is None:
        return torch.empty(1, dtype=torch.int32, device=device), False
    cu = torch.as_tensor(cu_seqlens, device=device)
    pos = torch.arange(offset, offset + n, device=device)
    return torch.searchsorted(cu, pos, right=True).to(torch.int32), True


def _blocks(d, dv, dtype):
    bd, bdv = triton.next_power_of_2(max(d, 16)), triton.next_power_of_2(max(dv, 16))
    big = max(bd, bdv) > 128 or dtype == torch.float32
    return bd, bdv, (64 if big else 128), (32 if big else 64)


def attention_block_fwd_triton(q, k, v, *, softmax_scale=None, causal=False, q_offset=0, k_offset=0,
                               window=(-1, -1), cu_seqlens=None, out_dtype=None):
    """Triton forward; same contract as :func:`.reference.attention_block_fwd_torch`."""
    b, sq, h, d = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(b, sq, h, dv, dtype=out_dtype or q.dtype, device=q.device)
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    qdoc, has_docs = _docs(cu_seqlens, q_offset, sq, q.device)
    kdoc, _ = _docs(cu_seqlens, k_offset, sk, q.device)
    bd, bdv, bm, bn = _blocks(d, dv, q.dtype)
    grid = (triton.cdiv(sq, bm), b * h)
    _fwd_kernel[grid](q, k, v, out, lse, qdoc, kdoc,
                      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                      h, h // hk, sq, sk, q_offset, k_offset, scale,
                      D=d, DV=dv, BD=bd, BDV=bdv, BM=bm, BN=bn, CAUSAL=bool(causal), LEFT=int(window[0]),
                      RIGHT=int(window[1]), HAS_DOCS=has_docs, num_warps=4)
    return out, lse


def attention_block_bwd_triton(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False, q_offset=0,
                               k_offset=0, window=(-1, -1), cu_seqlens=None, delta=None, grad_dtype=None):
    """Triton backward; same contract as :func:`.reference.attention_block_bwd_torch`."""
    b, sq, h, d = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    q, k, v, dout = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, dout))
    if delta is None:
        delta = (dout.float() * out.float()).sum(-1).transpose(1, 2)
    delta = delta.float().contiguous()
    lse = lse.float().contiguous()
    gd = grad_dtype or q.dtype
    dq = torch.empty(q.shape, dtype=gd, device=q.device)
    dk = torch.empty(k.shape, dtype=gd, device=q.device)
    dvv = torch.empty(v.shape, dtype=gd, device=q.device)
    qdoc, has_docs = _docs(cu_seqlens, q_offset, sq, q.device)
    kdoc, _ = _docs(cu_seqlens, k_offset, sk, q.device)
    bd, bdv, bm, bn = _blocks(d, dv, q.dtype)
    # the gradients are written with the strides of these contiguous copies
    qc, kc, vc, doc_ = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous()
    common = dict(D=d, DV=dv, BD=bd, BDV=bdv, BM=bm, BN=bn, CAUSAL=bool(causal), LEFT=int(window[0]),
                  RIGHT=int(window[1]), HAS_DOCS=has_docs, num_warps=4)
    strides = (qc.stride(0), qc.stride(1), qc.stride(2), kc.stride(0), kc.stride(1), kc.stride(2),
               vc.stride(0), vc.stride(1), vc.stride(2), doc_.stride(0), doc_.stride(1), doc_.stride(2))
    _bwd_dkdv_kernel[(triton.cdiv(sk, bn), b * hk)](qc, kc, vc, doc_, lse, delta, dk, dvv, qdoc, kdoc, *strides,
                                                     h, h // hk, sq, sk, q_offset, k_offset, scale, **common)
    _bwd_dq_kernel[(triton.cdiv(sq, bm), b * h)](qc, kc, vc, doc_, lse, delta, dq, qdoc, kdoc, *strides,
                                                 h, h // hk, sq, sk, q_offset, k_offset, scale, **common)
    return dq, dk, dvv
