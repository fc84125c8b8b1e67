"""Triton kernels for the shard-local part of (decayed, causal) linear attention.

One program per (batch x head [, value block]) walks the shard's blocks of ``BT`` tokens in order,
keeping the running state in registers (the "fused chunk" form): inside a block the masked, decayed
``(Q K^T) V`` product; across blocks ``lambda^(i+1) q_i S``. Exact at every token, diagonal
included. The backward has a forward-in-time kernel for dQ (with the same state) and a
reverse-in-time kernel for dK, dV (with the state of later queries). Semantics are those of
:func:`.reference.intra_chunk` / :func:`.reference.intra_chunk_backward`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _decay_mat(o_i, n, ld, HAS_DECAY: tl.constexpr):
    """``D[i, s] = lambda^(i-s)`` for ``s <= i < n``, else 0: ``[BT, BT]``."""
    diff = (o_i[:, None] - o_i[None, :]).to(tl.float32)
    keep = (o_i[:, None] >= o_i[None, :]) & (o_i[None, :] < n) & (o_i[:, None] < n)
    if HAS_DECAY:
        return tl.where(keep, tl.exp(ld * tl.maximum(diff, 0.0)), 0.0)
    return tl.where(keep, 1.0, 0.0)


@triton.jit
def _intra_fwd_kernel(Q, K, V, O, LD, sqb, sqs, sqh, svb, svs, svh, sob, sos, soh, H, C,
                      DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                      HAS_DECAY: tl.constexpr):
    bh = tl.program_id(0)
    pv = tl.program_id(1)
    b = bh // H
    h = bh % H
    o_k = tl.arange(0, BK)
    o_v = pv * BV + tl.arange(0, BV)
    o_i = tl.arange(0, BT)
    ld = tl.load(LD + h) if HAS_DECAY else 0.0
    b_s = tl.zeros([BK, BV], tl.float32)  # running state of the blocks before
    for start in range(0, C, BT):
        n = tl.minimum(BT, C - start)
        rows = start + o_i
        rm = o_i < n
        base_q = b.to(tl.int64) * sqb + h * sqh + rows[:, None].to(tl.int64) * sqs
        b_q = tl.load(Q + base_q + o_k[None, :], mask=rm[:, None] & (o_k[None, :] < DK), other=0.0).to(tl.float32)
        b_k = tl.load(K + base_q + o_k[None, :], mask=rm[:, None] & (o_k[None, :] < DK), other=0.0).to(tl.float32)
        base_v = b.to(tl.int64) * svb + h * svh + rows[:, None].to(tl.int64) * svs
        b_v = tl.load(V + base_v + o_v[None, :], mask=rm[:, None] & (o_v[None, :] < DV), other=0.0).to(tl.float32)
        b_a = tl.dot(b_q, tl.trans(b_k)) * _decay_mat(o_i, n, ld, HAS_DECAY)  # [BT, BT]
        b_o = tl.dot(b_a, b_v)  # [BT, BV]
        if HAS_DECAY:
            wq = tl.exp(ld * (o_i + 1).to(tl.float32))  # lambda^(i+1)
            wk = tl.where(rm, tl.exp(ld * (n - 1 - o_i).to(tl.float32)), 0.0)  # lambda^(n-1-s)
            b_o += tl.dot(b_q * wq[:, None], b_s)
            b_s = b_s * tl.exp(ld * n.to(tl.float32)) + tl.dot(tl.trans(b_k * wk[:, None]), b_v)
        else:
            b_o += tl.dot(b_q, b_s)
            b_s = b_s + tl.dot(tl.trans(b_k), b_v)
        base_o = b.to(tl.int64) * sob + h * soh + rows[:, None].to(tl.int64) * sos
        tl.store(O + base_o + o_v[None, :], b_o.to(O.dtype.element_ty), mask=rm[:, None] & (o_v[None, :] < DV))


@triton.jit
def _intra_dq_kernel(K, V, DO, DQ, LD, sqb, sqs, sqh, svb, svs, svh, H, C,
                     DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                     HAS_DECAY: tl.constexpr):
    """dq_i = sum_{s<=i} lambda^(i-s) (do_i . v_s) k_s, forward in time with the state S^T."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    o_i = tl.arange(0, BT)
    ld = tl.load(LD + h) if HAS_DECAY else 0.0
    b_s = tl.zeros([BV, BK], tl.float32)  # sum_s lambda^(.) v_s^T k_s of the blocks before
    for start in range(0, C, BT):
        n = tl.minimum(BT, C - start)
        rows = start + o_i
        rm = o_i < n
        base_k = b.to(tl.int64) * sqb + h * sqh + rows[:, None].to(tl.int64) * sqs
        b_k = tl.load(K + base_k + o_k[None, :], mask=rm[:, None] & (o_k[None, :] < DK), other=0.0).to(tl.float32)
        base_v = b.to(tl.int64) * svb + h * svh + rows[:, None].to(tl.int64) * svs
        b_v = tl.load(V + base_v + o_v[None, :], mask=rm[:, None] & (o_v[None, :] < DV), other=0.0).to(tl.float32)
        b_do = tl.load(DO + base_v + o_v[None, :], mask=rm[:, None] & (o_v[None, :] < DV), other=0.0).to(tl.float32)
        b_a = tl.dot(b_do, tl.trans(b_v)) * _decay_mat(o_i, n, ld, HAS_DECAY)  # [BT, BT]
        b_dq = tl.dot(b_a, b_k)  # [BT, BK]
        if HAS_DECAY:
            wq = tl.exp(ld * (o_i + 1).to(tl.float32))
            wk = tl.where(rm, tl.exp(ld * (n - 1 - o_i).to(tl.float32)), 0.0)
            b_dq += tl.dot(b_do * wq[:, None], b_s)
            b_s = b_s * tl.exp(ld * n.to(tl.float32)) + tl.dot(tl.trans(b_v), b_k * wk[:, None])
        else:
            b_dq += tl.dot(b_do, b_s)
            b_s = b_s + tl.dot(tl.trans(b_v), b_k)
        tl.store(DQ + base_k + o_k[None, :], b_dq.to(DQ.dtype.element_ty), mask=rm[:, None] & (o_k[None, :] < DK))


@triton.jit
def _intra_dkdv_kernel(Q, K, V, DO, DK, DV_, LD, sqb, sqs, sqh, svb, svs, svh, H, C, NB,
                       DK_: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                       HAS_DECAY: tl.constexpr):
    """dk_s = sum_{i>=s} lambda^(i-s) (do_i . v_s) q_i, dv_s = sum_{i>=s} lambda^(i-s) (q_i . k_s) do_i,
    backward in time with the state R = sum of the later queries' lambda-weighted q_i^T do_i."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    o_k = tl.arange(0, BK)
    o_v = tl.arange(0, BV)
    o_i = tl.arange(0, BT)
    ld = tl.load(LD + h) if HAS_DECAY else 0.0
    b_r = tl.zeros([BK, BV], tl.float32)
    for jb in range(0, NB):
        start = (NB - 1 - jb) * BT
        n = tl.minimum(BT, C - start)
        rows = start + o_i
        rm = o_i < n
        base_k = b.to(tl.int64) * sqb + h * sqh + rows[:, None].to(tl.int64) * sqs
        kmask = rm[:, None] & (o_k[None, :] < DK_)
        vmask = rm[:, None] & (o_v[None, :] < DV)
        b_q = tl.load(Q + base_k + o_k[None, :], mask=kmask, other=0.0).to(tl.float32)
        b_k = tl.load(K + base_k + o_k[None, :], mask=kmask, other=0.0).to(tl.float32)
        base_v = b.to(tl.int64) * svb + h * svh + rows[:, None].to(tl.int64) * svs
        b_v = tl.load(V + base_v + o_v[None, :], mask=vmask, other=0.0).to(tl.float32)
        b_do = tl.load(DO + base_v + o_v[None, :], mask=vmask, other=0.0).to(tl.float32)
        dmat = _decay_mat(o_i, n, ld, HAS_DECAY)  # [i, s]
        b_dk = tl.dot(tl.trans(tl.dot(b_do, tl.trans(b_v)) * dmat), b_q)  # [BT(s), BK]
        b_dv = tl.dot(tl.trans(tl.dot(b_q, tl.trans(b_k)) * dmat), b_do)  # [BT(s), BV]
        if HAS_DECAY:
            wk = tl.where(rm, tl.exp(ld * (n - 1 - o_i).to(tl.float32)), 0.0)  # lambda^(n-1-s)
            wq = tl.where(rm, tl.exp(ld * (o_i + 1).to(tl.float32)), 0.0)      # lambda^(i+1)
            b_dk += tl.dot(b_v * wk[:, None], tl.trans(b_r))
            b_dv += tl.dot(b_k * wk[:, None], b_r)
            b_r = b_r * tl.exp(ld * n.to(tl.float32)) + tl.dot(tl.trans(b_q * wq[:, None]), b_do)
        else:
            b_dk += tl.dot(b_v, tl.trans(b_r))
            b_dv += tl.dot(b_k, b_r)
            b_r = b_r + tl.dot(tl.trans(b_q), b_do)
        tl.store(DK + base_k + o_k[None, :], b_dk.to(DK.dtype.element_ty), mask=kmask)
        tl.store(DV_ + base_v + o_v[None, :], b_dv.to(DV_.dtype.element_ty), mask=vmask)


def _prep(*ts):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


def _sizes(q, v, block):
    dk, dv = q.shape[-1], v.shape[-1]
    bk, bv = triton.next_power_of_2(max(dk, 16)), triton.next_power_of_2(max(dv, 16))
    bt = max(16, min(triton.next_power_of_2(block), 64))
    return dk, dv, bk, bv, bt


def intra_chunk_triton(q, k, v, *, log_decay=None, block: int = 64) -> torch.Tensor:
    """Triton version of :func:`.reference.intra_chunk` (fp32 output)."""
    q, k, v = (t.contiguous() for t in (q, k, v))  # q and k share strides below
    b, c, h, _ = q.shape
    dk, dv, bk, bv, bt = _sizes(q, v, block)
    out = torch.empty(b, c, h, dv, dtype=torch.float32, device=q.device)
    ld = (log_decay.float().contiguous() if log_decay is not None else torch.zeros(1, device=q.device))
    _intra_fwd_kernel[(b * h, 1)](q, k, v, out, ld, q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1),
                                  v.stride(2), out.stride(0), out.stride(1), out.stride(2), h, c, DK=dk, DV=dv, BK=bk,
                                  BV=bv, BT=bt, HAS_DECAY=log_decay is not None)
    return out


def intra_chunk_backward_triton(q, k, v, dout, *, log_decay=None, block: int = 64):
    """Triton version of :func:`.reference.intra_chunk_backward` (fp32 gradients)."""
    q, k, v = (t.contiguous() for t in (q, k, v))
    dout = dout.to(v.dtype if v.dtype != torch.float64 else torch.float32).contiguous()
    b, c, h, _ = q.shape
    dk_, dv, bk, bv, bt = _sizes(q, v, block)
    ld = (log_decay.float().contiguous() if log_decay is not None else torch.zeros(1, device=q.device))
    dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.empty(k.shape, dtype=torch.float32, device=q.device)
    dvv = torch.empty(v.shape, dtype=torch.float32, device=q.device)
    strides = (q.stride(0), q.stride(1), q.stride(2), v.stride(0), v.stride(1), v.stride(2))
    kw = dict(DV=dv, BK=bk, BV=bv, BT=bt, HAS_DECAY=log_decay is not None)
    _intra_dq_kernel[(b * h,)](k, v, dout, dq, ld, *strides, h, c, DK=dk_, **kw)
    _intra_dkdv_kernel[(b * h,)](q, k, v, dout, dk, dvv, ld, *strides, h, c, triton.cdiv(c, bt), DK_=dk_, **kw)
    return dq, dk, dvv
