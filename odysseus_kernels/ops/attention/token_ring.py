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
from ..layout import layout_chunks
from .blocks import needed_query_slots, plan_blocks
from .common import (acc_dtype, blocks_backward, blocks_forward, new_accumulators, row_delta, rows, scale_of, validate_qkv,
                     validate_window)
from .driver import NOTHING, Schedule, run_schedule

_TAG_Q, _TAG_STATS, _TAG_OUT, _TAG_LSE = 31, 32, 33, 34


class _TokenRingBase(Schedule):
    def __init__(self, info, chunks, q, k, v, *, causal, scale, backend, window):
        self.info, self.chunks, self.steps = info, chunks, info.size
        self.q, self.k, self.v = q, k, v
        self.causal, self.scale, self.backend, self.window = causal, scale, backend, window
        self.c = q.shape[1] // len(chunks[0])
        self.acc_dtype = acc_dtype(q.dtype)
        self.received = {}  # step -> received tensors
        self.partial = {}   # step -> results to return
        self.returned = {}  # step -> receive buffers of returned results

    def peers(self, t):
        n, r = self.info.size, self.info.rank
        return (r + t) % n, (r - t) % n  # (dst: gets my queries, src: sends me its queries)

    def my_slots_for(self, dst):
        """My query slots that rank ``dst``'s keys serve."""
        return needed_query_slots(self.chunks[self.info.rank], self.chunks[dst], self.causal, self.c, self.window)

    def src_slots(self, src):
        """Rank ``src``'s query slots that my keys serve."""
        return needed_query_slots(self.chunks[src], self.chunks[self.info.rank], self.causal, self.c, self.window)

    def blocks_for(self, src, slots):
        q_chunks = [self.chunks[src][s] for s in slots]
        return plan_blocks(q_chunks, self.chunks[self.info.rank], self.c, self.causal, self.window)

    def slot_views(self, t, slots):
        """(start, stop) row ranges in my tensors of the chunk slots, for scattering results back."""
        return [(s * self.c, (s + 1) * self.c) for s in slots]


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
            sends.append((dst, rows(self.q, mine, self.c).contiguous(), _TAG_Q))
        theirs = self.src_slots(src)
        if theirs:
            b, _, h, d = self.q.shape
            buf = torch.empty(b, len(theirs) * self.c, h, d, dtype=self.q.dtype, device=self.q.device)
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
            o, lse = new_accumulators(self.q, len(mine) * self.c, self.v.shape[-1])
            self.returned[t] = (mine, o, lse)
            recvs += [(dst, o, _TAG_OUT), (dst, lse, _TAG_LSE)]
        return sends, recvs

    def _attend(self, qs, src, slots, out, lse):
        blocks_forward(qs, self.k, self.v, self.blocks_for(src, slots), out, lse, scale=self.scale,
                       backend=self.backend, causal=self.causal, window=self.window)

    def _merge_returned(self, t):
        if t not in self.returned:
            return
        slots, o, lse = self.returned.pop(t)
        for j, (a, e) in enumerate(self.slot_views(t, slots)):
            c = self.c
            merge_attention(self.out[:, a:e], self.lse[:, :, a:e], o[:, j * c:(j + 1) * c], lse[:, :, j * c:(j + 1) * c])

    def compute(self, t, handle):
        if t == 0:
            self._attend(self.q, self.info.rank, list(range(len(self.chunks[0]))), self.out, self.lse)
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
    def __init__(self, info, chunks, q, k, v, out, lse, dout, **kw):
        super().__init__(info, chunks, q, k, v, **kw)
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
            sends.append((dst, rows(self.qdo, mine, self.c, dim=2).contiguous(), _TAG_Q))
            sends.append((dst, rows(self.stats, mine, self.c, dim=3).contiguous(), _TAG_STATS))
        theirs = self.src_slots(src)
        if theirs:
            n = len(theirs) * self.c
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
            buf = torch.empty((self.q.shape[0], len(mine) * self.c) + tuple(self.q.shape[2:]), dtype=self.acc_dtype,
                              device=self.q.device)
            self.returned[t] = (mine, buf)
            recvs.append((dst, buf, _TAG_OUT))
        return sends, recvs

    def _grad(self, qdo, stats, src, slots, dq):
        blocks_backward(qdo[1], qdo[0], self.k, self.v, None, stats[0], stats[1], self.blocks_for(src, slots), dq,
                        self.dk, self.dv, scale=self.scale, backend=self.backend, causal=self.causal,
                        window=self.window)

    def _add_returned(self, t):
        if t not in self.returned:
            return
        slots, buf = self.returned.pop(t)
        c = self.c
        for j, (a, e) in enumerate(self.slot_views(t, slots)):
            self.dq[:, a:e] += buf[:, j * c:(j + 1) * c]

    def compute(self, t, handle):
        if t == 0:
            self._grad(self.qdo, self.stats, self.info.rank, list(range(len(self.chunks[0]))), self.dq)
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


def token_ring_rows(world: int, rank: int, seq_local: int, layout: str, causal: bool,
                    window=(-1, -1)) -> tuple[int, int]:
    """Query rows ``rank`` receives over a TokenRing pass, and rows of its own queries whose
    partials come back (the sizes the ledger sees)."""
    chunks = layout_chunks(layout, world)
    c = seq_local // len(chunks[0])
    rows_in = sum(len(needed_query_slots(chunks[(rank - t) % world], chunks[rank], causal, c, window)) * c
                  for t in range(1, world))
    rows_back = sum(len(needed_query_slots(chunks[rank], chunks[(rank + t) % world], causal, c, window)) * c
                    for t in range(1, world))
    return rows_in, rows_back


def token_ring_comm_bytes(world, rank, batch, seq_local, heads, head_dim, elem_bytes, layout, causal,
                          window=(-1, -1)) -> dict:
    """Closed-form bytes received by ``rank`` (ledger kind ``p2p``), forward and backward."""
    r_in, r_out = token_ring_rows(world, rank, seq_local, layout, causal, window)
    acc = 8 if elem_bytes == 8 else 4
    bh = batch * heads
    fwd = bh * (r_in * head_dim * elem_bytes + r_out * (head_dim * acc + acc))
    bwd = bh * (r_in * (2 * head_dim * elem_bytes + 2 * acc) + r_out * head_dim * acc)
    return {"forward": fwd, "backward": bwd}


class _TokenRingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, info, chunks, causal, scale, backend, window):
        sched = run_schedule(TokenRingForward(info, chunks, q, k, v, causal=causal, scale=scale, backend=backend,
                                              window=window), info)
        out = sched.out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, sched.lse)
        ctx.opts = (info, chunks, causal, scale, backend, window)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        info, chunks, causal, scale, backend, window = ctx.opts
        sched = run_schedule(TokenRingBackward(info, chunks, q, k, v, out, lse, dout.contiguous(), causal=causal,
                                               scale=scale, backend=backend, window=window), info)
        return sched.dq.to(q.dtype), sched.dk.to(k.dtype), sched.dv.to(v.dtype), None, None, None, None, None, None


def token_ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                         softmax_scale: float | None = None, layout: str = "zigzag",
                         window: tuple[int, int] = (-1, -1), backend: str = "auto") -> torch.Tensor:
    """TokenRing attention: K/V stay resident, queries and partial outputs travel (both link directions).

    Args:
        q: ``[B, C, H, D]``; k, v: ``[B, C, H_kv, D]`` this rank's shards in ``layout``.
        group, causal, softmax_scale, layout, window, backend: as in :func:`ring_attention` (queries a
            window keeps away from a rank are never sent to it).
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
                     softmax_scale=softmax_scale, extra={"window": window})
        window = validate_window("token_ring_attention", window)
    return _TokenRingAttention.apply(q, k, v, info, layout_chunks(layout, info.size), causal,
                                     scale_of(q, softmax_scale), backend, window)
