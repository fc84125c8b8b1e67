"""TokenRing: K and V stay on their owner; queries travel, partial results travel back.

Forward, step t (t = 1..N-1) on rank r: r sends to ``r+t`` the query chunks that rank can see
(:func:`~.blocks.needed_query_slots`: with zigzag and causal, all of Q when ``r+t`` wraps below r,
else only the second half; with contiguous and causal nothing at all when ``r+t`` is later), and
receives from ``r-t`` the chunks of its queries that this rank's keys serve. It attends them to its
resident K/V and sends the partial ``(out, lse)`` (fp32) straight back to ``r-t``, while the query
transfer of step t+1 and the partial of step t-1 are in flight (one batched exchange per step, both
directions of the ring's links busy at once). The owner merges the partials into its fp32
accumulators.

Backward (ours; the published TokenRing has none): K/V stay resident and dK/dV accumulate locally
in fp32. At step t the owner sends ``(Q, dO)`` (input dtype) and ``(lse, delta)`` (fp32) of the
needed rows to ``r+t``, which computes the block gradient against its K/V, keeps dK/dV, and returns
the fp32 dQ partial directly to the owner. Nothing of K/V ever moves.

Bytes received by rank r (ledger kind ``p2p``; ``b`` input element size, ``a = 4`` for the fp32
partials): with ``R_in`` the query rows r receives and ``R_back`` the rows of its own queries whose
partials come back, forward ``B*H*(R_in*D*b + R_back*(D+1)*a)`` and backward
``B*H*(R_in*(2*D*b + 2*a) + R_back*D*a)``. Causal zigzag: ``R_in = (N-1)C - rC/2`` and
``R_back = (N-1)C/2 + rC/2`` (together 3/4 of a full Q rotation per direction on average); no mask:
``R_in = R_back = (N-1)C``; causal contiguous: ``R_in = (N-1-r)C``, ``R_back = rC``. See
:func:`token_ring_comm_bytes`. Partials go straight to their owner (``r - t``), which on NVLink /
NVSwitch is a direct link: on a neighbour-only ring queries and partials move apart two ranks per
step and could not be merged on the way.
"""
from __future__ import annotations

import torch

from ...comm import group_info, rank_consistent
from ...kernels.attention import merge_attention
from ..layout import layout_spans
from .blocks import Mask, needed_query_slots, plan_blocks, span_rows
from .common import (acc_dtype, blocks_backward, blocks_forward, new_accumulators, resolve_layout, row_delta, rows,
                     scale_of, validate_qkv)
from .driver import NOTHING, Schedule, run_schedule

_TAG_Q, _TAG_STATS, _TAG_OUT, _TAG_LSE = 31, 32, 33, 34


class _TokenRingBase(Schedule):
    def __init__(self, info, spans, q, k, v, *, mask, scale, backend):
        self.info, self.spans, self.steps = info, spans, info.size
        self.q, self.k, self.v = q, k, v
        self.mask, self.scale, self.backend = mask, scale, backend
        self.acc_dtype = acc_dtype(q.dtype)
        self.received = {}  # step -> received tensors
        self.partial = {}   # step -> results to return
        self.returned = {}  # step -> receive buffers of returned results

    def peers(self, t):
        n, r = self.info.size, self.info.rank
        return (r + t) % n, (r - t) % n  # (dst: gets my queries, src: sends me its queries)

    def my_slots_for(self, dst):
        """My query spans that rank ``dst``'s keys serve."""
        return needed_query_slots(self.spans[self.info.rank], self.spans[dst], self.mask)

    def src_slots(self, src):
        """Rank ``src``'s query spans that my keys serve."""
        return needed_query_slots(self.spans[src], self.spans[self.info.rank], self.mask)

    def nrows(self, owner, slots):
        return sum(self.spans[owner][s][1] for s in slots)

    def blocks_for(self, src, slots):
        return plan_blocks([self.spans[src][s] for s in slots], self.spans[self.info.rank], self.mask)

    def my_rows(self, slots):
        """(start, stop) rows in my tensors of my spans ``slots``."""
        return span_rows(self.spans[self.info.rank], slots)


class TokenRingForward(_TokenRingBase):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.out, self.lse = new_accumulators(self.q, self.q.shape[1], self.v.shape[-1])

    def fetch(self, t):
        if t == 0:
            return NOTHING
        dst, src = self.peers(t)
        sends, recvs = [], []
        mine = self.my_slots_for(dst)
        if mine:
            sends.append((dst, rows(self.q, self.my_rows(mine)).contiguous(), _TAG_Q))
        theirs = self.src_slots(src)
        if theirs:
            b, _, h, d = self.q.shape
            buf = torch.empty(b, self.nrows(src, theirs), h, d, dtype=self.q.dtype, device=self.q.device)
            self.received[t] = buf
            recvs.append((src, buf, _TAG_Q))
        return sends, recvs

    def returns(self, t):
        if t == 0:
            return NOTHING
        dst, src = self.peers(t)
        sends, recvs = [], []
        if t in self.partial:
            o, lse = self.partial.pop(t)
            sends += [(src, o, _TAG_OUT), (src, lse, _TAG_LSE)]
        mine = self.my_slots_for(dst)
        if mine:
            o, lse = new_accumulators(self.q, self.nrows(self.info.rank, mine), self.v.shape[-1])
            self.returned[t] = (mine, o, lse)
            recvs += [(dst, o, _TAG_OUT), (dst, lse, _TAG_LSE)]
        return sends, recvs

    def _attend(self, qs, src, slots, out, lse):
        blocks_forward(qs, self.k, self.v, self.blocks_for(src, slots), out, lse, scale=self.scale,
                       backend=self.backend, mask=self.mask)

    def _merge_returned(self, t):
        if t not in self.returned:
            return
        slots, o, lse = self.returned.pop(t)
        j = 0
        for a, e in self.my_rows(slots):
            merge_attention(self.out[:, a:e], self.lse[:, :, a:e], o[:, j:j + e - a], lse[:, :, j:j + e - a])
            j += e - a

    def compute(self, t, handle):
        if t == 0:
            self._attend(self.q, self.info.rank, list(range(len(self.spans[self.info.rank]))), self.out, self.lse)
        else:
            _, src = self.peers(t)
            slots = self.src_slots(src)
            if slots:
                qs = self.received.pop(t)
                o, lse = new_accumulators(qs, qs.shape[1], self.v.shape[-1])
                self._attend(qs, src, slots, o, lse)
                self.partial[t] = (o, lse)
        if t >= 2:
            handle.wait()
            self._merge_returned(t - 1)

    def finish(self):
        self._merge_returned(self.steps - 1)


class TokenRingBackward(_TokenRingBase):
    def __init__(self, info, spans, q, k, v, out, lse, dout, **kw):
        super().__init__(info, spans, q, k, v, **kw)
        self.dout, self.lse_final = dout, lse
        ad = self.acc_dtype
        self.delta = row_delta(dout, out, ad)  # [B, H, C]
        self.stats = torch.stack([lse.to(ad), self.delta])  # [2, B, H, C]: what travels with the rows
        self.qdo = torch.stack([q, dout])  # [2, B, C, H, D]
        self.dq = torch.zeros(q.shape, dtype=ad, device=q.device)
        self.dk = torch.zeros(k.shape, dtype=ad, device=k.device)
        self.dv = torch.zeros(v.shape, dtype=ad, device=v.device)

    def fetch(self, t):
        if t == 0:
            return NOTHING
        dst, src = self.peers(t)
        sends, recvs = [], []
        mine = self.my_slots_for(dst)
        if mine:
            sends.append((dst, rows(self.qdo, self.my_rows(mine), dim=2).contiguous(), _TAG_Q))
            sends.append((dst, rows(self.stats, self.my_rows(mine), dim=3).contiguous(), _TAG_STATS))
        theirs = self.src_slots(src)
        if theirs:
            n = self.nrows(src, theirs)
            qdo = self.qdo.new_empty(self.qdo.shape[:2] + (n,) + self.qdo.shape[3:])
            st = self.stats.new_empty(self.stats.shape[:3] + (n,))
            self.received[t] = (qdo, st)
            recvs += [(src, qdo, _TAG_Q), (src, st, _TAG_STATS)]
        return sends, recvs

    def returns(self, t):
        if t == 0:
            return NOTHING
        dst, src = self.peers(t)
        sends, recvs = [], []
        if t in self.partial:
            sends.append((src, self.partial.pop(t), _TAG_OUT))
        mine = self.my_slots_for(dst)
        if mine:
            buf = torch.empty((self.q.shape[0], self.nrows(self.info.rank, mine)) + tuple(self.q.shape[2:]),
                              dtype=self.acc_dtype, device=self.q.device)
            self.returned[t] = (mine, buf)
            recvs.append((dst, buf, _TAG_OUT))
        return sends, recvs

    def _grad(self, qdo, stats, src, slots, dq):
        blocks_backward(qdo[1], qdo[0], self.k, self.v, None, stats[0], stats[1], self.blocks_for(src, slots), dq,
                        self.dk, self.dv, scale=self.scale, backend=self.backend, mask=self.mask)

    def _add_returned(self, t):
        if t not in self.returned:
            return
        slots, buf = self.returned.pop(t)
        j = 0
        for a, e in self.my_rows(slots):
            self.dq[:, a:e] += buf[:, j:j + e - a]
            j += e - a

    def compute(self, t, handle):
        if t == 0:
            self._grad(self.qdo, self.stats, self.info.rank, list(range(len(self.spans[self.info.rank]))), self.dq)
        else:
            _, src = self.peers(t)
            slots = self.src_slots(src)
            if slots:
                qdo, st = self.received.pop(t)
                dq = torch.zeros(qdo.shape[1:], dtype=self.acc_dtype, device=qdo.device)
                self._grad(qdo, st, src, slots, dq)
                self.partial[t] = dq
        if t >= 2:
            handle.wait()
            self._add_returned(t - 1)

    def finish(self):
        self._add_returned(self.steps - 1)


def token_ring_rows(world: int, rank: int, seq_local: int, layout: str, causal: bool, window=(-1, -1),
                    cu_seqlens=None) -> tuple[int, int]:
    """Query rows ``rank`` receives over a TokenRing pass, and rows of its own queries whose
    partials come back (the sizes the ledger sees)."""
    spans = layout_spans(layout, world, seq_local * world, cu_seqlens)
    mask = Mask(causal=causal, window=tuple(window), cu_seqlens=None if cu_seqlens is None else tuple(cu_seqlens))
    rows_in = sum(spans[(rank - t) % world][s][1] for t in range(1, world)
                  for s in needed_query_slots(spans[(rank - t) % world], spans[rank], mask))
    rows_back = sum(spans[rank][s][1] for t in range(1, world)
                    for s in needed_query_slots(spans[rank], spans[(rank + t) % world], mask))
    return rows_in, rows_back


def token_ring_comm_bytes(world, rank, batch, seq_local, heads, head_dim, elem_bytes, layout, causal,
                          window=(-1, -1), cu_seqlens=None) -> dict:
    """Closed-form bytes received by ``rank`` (ledger kind ``p2p``), forward and backward."""
    r_in, r_out = token_ring_rows(world, rank, seq_local, layout, causal, window, cu_seqlens)
    acc = 8 if elem_bytes == 8 else 4
    bh = batch * heads
    fwd = bh * (r_in * head_dim * elem_bytes + r_out * (head_dim * acc + acc))
    bwd = bh * (r_in * (2 * head_dim * elem_bytes + 2 * acc) + r_out * head_dim * acc)
    return {"forward": fwd, "backward": bwd}


class _TokenRingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, info, spans, mask, scale, backend):
        sched = run_schedule(TokenRingForward(info, spans, q, k, v, mask=mask, scale=scale, backend=backend), info)
        out = sched.out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, sched.lse)
        ctx.opts = (info, spans, mask, scale, backend)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        info, spans, mask, scale, backend = ctx.opts
        sched = run_schedule(TokenRingBackward(info, spans, q, k, v, out, lse, dout.contiguous(), mask=mask,
                                               scale=scale, backend=backend), info)
        return sched.dq.to(q.dtype), sched.dk.to(k.dtype), sched.dv.to(v.dtype), None, None, None, None, None


def token_ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                         softmax_scale: float | None = None, layout: str = "zigzag",
                         window: tuple[int, int] = (-1, -1), cu_seqlens=None, backend: str = "auto") -> torch.Tensor:
    """TokenRing attention: K/V stay resident, queries and partial outputs travel (both link directions).

    Args:
        q: ``[B, C, H, D]``; k, v: ``[B, C, H_kv, D]`` this rank's shards in ``layout``.
        group, causal, softmax_scale, layout, window, cu_seqlens, backend: as in
            :func:`ring_attention` (queries the mask keeps away from a rank are never sent to it).
    Returns:
        ``[B, C, H, D]`` in ``q.dtype``.
    Communication: see the module docstring and :func:`token_ring_comm_bytes` (no K/V moves; with
    causal zigzag ~3/4 of a full Q rotation, plus fp32 partial outputs and lse).
    Example::

        out = ok.token_ring_attention(q_local, k_local, v_local, causal=True, layout="zigzag")
    """
    info = group_info(group)
    with rank_consistent("token_ring_attention", info) as check:
        validate_qkv("token_ring_attention", check, q, k, v, layout=layout, causal=causal,
                     softmax_scale=softmax_scale, extra={"window": window}, cu_seqlens=cu_seqlens)
        spans, mask = resolve_layout("token_ring_attention", layout, info.size, q.shape[1], causal, window,
                                     cu_seqlens)
    return _TokenRingAttention.apply(q, k, v, info, spans, mask, scale_of(q, softmax_scale), backend)
