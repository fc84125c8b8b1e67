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

from ..._util import acc_dtype
from ...comm import group_info
from ...kernels.attention import merge_attention
from ..layout import layout_spans
from ..ring import NOTHING, Schedule
from ..ring.tags import TOKEN_RING_BACK, TOKEN_RING_OUT
from .blocks import Mask, needed_query_slots, plan_blocks, span_rows
from .common import (DEFAULT_LAYOUT, blocks_attention, blocks_backward, empty_attention, is_empty,
                     new_accumulators, row_delta, rows, scale_of, validated_layout)
from .scheduled import ScheduledAttention


class _TokenRingBase(Schedule):
    """Both TokenRing passes: at step t the rows of my queries that rank ``r+t`` needs go there
    (:attr:`travelling`: ``(tensor, row_dim)`` pairs), the rows rank ``r-t`` sends me are
    :meth:`served` against my resident K/V, and the partial results go straight back to their
    owner, which :meth:`absorb` s them (step 0 is local: my own rows are served and absorbed here)."""

    travelling: list  # [(tensor, row dim)]

    def __init__(self, info, spans, q, k, v, *, mask, scale, backend):
        self.info, self.spans, self.steps = info, spans, info.size
        self.q, self.k, self.v = q, k, v
        self.mask, self.scale, self.backend = mask, scale, backend
        self.acc_dtype = acc_dtype(q.dtype)
        self.received = {}  # step -> received tensors
        self.partial = {}   # step -> results to return
        self.returned = {}  # step -> (my spans, receive buffers of their results)

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

    def my_row_pieces(self, slots):
        """``(a, e, j)``: rows ``[a, e)`` of my tensors are rows ``[j, j + e - a)`` of a compact buffer."""
        j = 0
        for a, e in span_rows(self.spans[self.info.rank], slots):
            yield a, e, j
            j += e - a

    def fetch(self, t):
        if t == 0:
            return NOTHING
        dst, src = self.peers(t)
        sends, recvs = [], []
        mine = self.my_slots_for(dst)
        if mine:
            rr = span_rows(self.spans[self.info.rank], mine)
            sends += [(dst, rows(x, rr, dim).contiguous(), tag)
                      for (x, dim), tag in zip(self.travelling, TOKEN_RING_OUT)]
        theirs = self.src_slots(src)
        if theirs:
            n = self.nrows(src, theirs)
            bufs = [x.new_empty(x.shape[:dim] + (n,) + x.shape[dim + 1:]) for x, dim in self.travelling]
            self.received[t] = bufs
            recvs += [(src, buf, tag) for buf, tag in zip(bufs, TOKEN_RING_OUT)]
        return sends, recvs

    def returns(self, t):
        if t == 0:
            return NOTHING
        dst, src = self.peers(t)
        sends, recvs = [], []
        if t in self.partial:
            sends += [(src, x, tag) for x, tag in zip(self.partial.pop(t), TOKEN_RING_BACK)]
        mine = self.my_slots_for(dst)
        if mine:
            bufs = self.new_results(self.nrows(self.info.rank, mine))
            self.returned[t] = (mine, bufs)
            recvs += [(dst, buf, tag) for buf, tag in zip(bufs, TOKEN_RING_BACK)]
        return sends, recvs

    def compute(self, t, handle):
        if t == 0:
            mine = list(range(len(self.spans[self.info.rank])))
            self.absorb(mine, self.serve([x for x, _ in self.travelling], self.info.rank, mine))
        else:
            _, src = self.peers(t)
            slots = self.src_slots(src)
            if slots:
                self.partial[t] = self.serve(self.received.pop(t), src, slots)
        if t >= 2:
            handle.wait()
            self._absorb_returned(t - 1)

    def finish(self):
        self._absorb_returned(self.steps - 1)

    def _absorb_returned(self, t):
        if t in self.returned:
            self.absorb(*self.returned.pop(t))

    def serve(self, travelled, src, slots) -> list:
        """Results for rank ``src``'s rows ``slots`` against my K/V (compact, in slot order)."""
        raise NotImplementedError

    def new_results(self, nrows) -> list:
        raise NotImplementedError

    def absorb(self, slots, results) -> None:
        """Fold results for my rows ``slots`` into my accumulators."""
        raise NotImplementedError


class TokenRingForward(_TokenRingBase):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.travelling = [(self.q, 1)]
        self.out, self.lse = new_accumulators(self.q, self.q.shape[1], self.v.shape[-1])

    def new_results(self, nrows):
        return list(new_accumulators(self.q, nrows, self.v.shape[-1]))

    def serve(self, travelled, src, slots):
        qs = travelled[0]
        return list(blocks_attention(qs, self.k, self.v, self.blocks_for(src, slots), scale=self.scale,
                                     backend=self.backend, mask=self.mask))

    def absorb(self, slots, results):
        o, lse = results
        for a, e, j in self.my_row_pieces(slots):
            merge_attention(self.out[:, a:e], self.lse[:, :, a:e], o[:, j:j + e - a], lse[:, :, j:j + e - a])


class TokenRingBackward(_TokenRingBase):
    def __init__(self, info, spans, q, k, v, out, lse, dout, **kw):
        super().__init__(info, spans, q, k, v, **kw)
        ad = self.acc_dtype
        stats = torch.stack([lse.to(ad), row_delta(dout, out, ad)])  # [2, B, H, C]: lse and delta
        self.travelling = [(torch.stack([q, dout]), 2), (stats, 3)]   # [2, B, C, H, D] and [2, B, H, C]
        self.dq = torch.zeros(q.shape, dtype=ad, device=q.device)
        self.dk = torch.zeros(k.shape, dtype=ad, device=k.device)
        self.dv = torch.zeros(v.shape, dtype=ad, device=v.device)

    def new_results(self, nrows):
        return [torch.empty((self.q.shape[0], nrows) + tuple(self.q.shape[2:]), dtype=self.acc_dtype,
                            device=self.q.device)]

    def serve(self, travelled, src, slots):
        (q, do), (lse, delta) = travelled
        dq = torch.zeros(q.shape, dtype=self.acc_dtype, device=q.device)
        blocks_backward(do, q, self.k, self.v, None, lse, delta, self.blocks_for(src, slots), dq, self.dk, self.dv,
                        scale=self.scale, backend=self.backend, mask=self.mask)
        return [dq]

    def absorb(self, slots, results):
        for a, e, j in self.my_row_pieces(slots):
            self.dq[:, a:e] += results[0][:, j:j + e - a]

    def grads(self):
        return self.dq, self.dk, self.dv


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


def token_ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                         softmax_scale: float | None = None, layout: str = DEFAULT_LAYOUT,
                         window_size: tuple[int, int] = (-1, -1), cu_seqlens=None, return_lse: bool = False,
                         backend: str = "auto"):
    """TokenRing attention: K/V stay resident, queries and partial outputs travel (both link directions).

    Args:
        q: ``[B, C, H, D]``; k, v: ``[B, C, H_kv, D]`` this rank's shards in ``layout``.
        group, causal, softmax_scale, layout, window_size, cu_seqlens, return_lse, backend: as in
            :func:`ring_attention` (queries the mask keeps away from a rank are never sent to it).
    Returns:
        ``[B, C, H, D]`` in ``q.dtype`` (``(out, lse)`` with ``return_lse=True``).
    Communication: see the module docstring and :func:`token_ring_comm_bytes` (no K/V moves; with
    causal zigzag ~3/4 of a full Q rotation, plus fp32 partial outputs and lse).
    Example::

        out = ok.token_ring_attention(q_local, k_local, v_local, causal=True, layout="zigzag")
    """
    info = group_info(group)
    spans, mask = validated_layout("token_ring_attention", info, q, k, v, layout=layout, causal=causal,
                                   softmax_scale=softmax_scale, window_size=window_size, cu_seqlens=cu_seqlens)
    if is_empty(q, k):
        return empty_attention(q, k, v, return_lse)
    out, lse = ScheduledAttention.apply(q, k, v, TokenRingForward, TokenRingBackward, info, spans, mask,
                                        scale_of(q, softmax_scale), backend)
    return (out, lse) if return_lse else out
