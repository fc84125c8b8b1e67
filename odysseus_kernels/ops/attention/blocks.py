"""Which attention blocks a shard of queries computes against a shard of keys.

A shard is a list of spans ``(global_start, length)`` stored one after the other
(:func:`~odysseus_kernels.ops.layout.layout_spans`): contiguous layout gives rank r one span, zigzag
two, a per-document layout two per document, a USP Ulysses group the union of its members' spans.
Every ring variant (ring, TokenRing, USP's ring, all-gather-KV) plans its blocks here, so the mask
(causal, sliding window, documents of a packed stream) is exact whatever the layout, and no work or
communication is spent on span pairs that the mask hides entirely.
"""
from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, field

NO_WINDOW = (-1, -1)


@dataclass(frozen=True)
class Mask:
    """What a query at global position ``i`` may see: ``causal`` (keys ``<= i``), ``window``
    ``(left, right)`` (keys in ``[i-left, i+right]``, -1 = unbounded), and ``cu_seqlens`` (keys of
    the same document of a packed stream)."""

    causal: bool = False
    window: tuple[int, int] = NO_WINDOW
    cu_seqlens: tuple[int, ...] | None = field(default=None)

    def bounds(self) -> tuple[float, float]:
        """Allowed range of ``kpos - qpos``."""
        left, right = self.window
        lo = -left if left >= 0 else float("-inf")
        hi = right if right >= 0 else float("inf")
        if self.causal:
            hi = min(hi, 0)
        return lo, hi

    def doc(self, pos: int) -> int:
        return 0 if self.cu_seqlens is None else bisect.bisect_right(self.cu_seqlens, pos) - 1

    def kernel_args(self, q_offset: int, k_offset: int) -> dict:
        return {"causal": self.causal, "window": tuple(self.window), "q_offset": q_offset, "k_offset": k_offset,
                "cu_seqlens": self.cu_seqlens}


@dataclass(frozen=True)
class Block:
    """Queries ``[q_start, q_stop)`` (local rows) against keys ``[k_start, k_stop)``.

    ``masked`` blocks are one partly visible span pair: the kernel applies the mask at global
    offsets ``q_offset`` / ``k_offset``. Other blocks are fully visible (no mask).
    """

    q_start: int
    q_stop: int
    k_start: int
    k_stop: int
    masked: bool = False
    q_offset: int = 0
    k_offset: int = 0

    @property
    def q(self) -> slice:
        return slice(self.q_start, self.q_stop)

    @property
    def k(self) -> slice:
        return slice(self.k_start, self.k_stop)

    def work(self, mask: Mask = Mask(causal=True)) -> int:
        """Score entries this block needs (the unit of the balance test)."""
        nq, nk = self.q_stop - self.q_start, self.k_stop - self.k_start
        if not self.masked:
            return nq * nk
        lo, hi = mask.bounds()
        total = 0
        for i in range(nq):
            qp = self.q_offset + i
            for j in range(nk):
                kp = self.k_offset + j
                total += lo <= kp - qp <= hi and mask.doc(qp) == mask.doc(kp)
        return total


def pair_kind(q_span, k_span, mask: Mask) -> str:
    """``"full"``, ``"masked"`` or ``"none"`` for a query span against a key span."""
    (qs, ql), (ks, kl) = q_span, k_span
    lo, hi = mask.bounds()
    d_min, d_max = ks - (qs + ql - 1), (ks + kl - 1) - qs
    if d_max < lo or d_min > hi:
        return "none"
    full = d_min >= lo and d_max <= hi
    if mask.cu_seqlens is not None:
        qd = (mask.doc(qs), mask.doc(qs + ql - 1))
        kd = (mask.doc(ks), mask.doc(ks + kl - 1))
        if qd[1] < kd[0] or kd[1] < qd[0]:
            return "none"
        full = full and qd[0] == qd[1] == kd[0] == kd[1]
    return "full" if full else "masked"


def _starts(spans) -> list[int]:
    out, acc = [], 0
    for _, m in spans:
        out.append(acc)
        acc += m
    return out


def _key(spans) -> tuple:
    return spans if isinstance(spans, tuple) and (not spans or isinstance(spans[0], tuple)) else \
        tuple((int(s), int(n)) for s, n in spans)


def plan_blocks(q_spans, k_spans, mask: Mask) -> list[Block]:
    """Blocks covering exactly the visible (query, key) pairs, coalesced where no mask is needed:
    runs of adjacent fully-visible key spans of a query span form one block, and adjacent query
    spans with the same fully-visible key runs share it. Cached on (spans, mask): a layer's every
    call after the first plans nothing."""
    return list(_plan_blocks(_key(q_spans), _key(k_spans), mask))


def _increasing(spans) -> bool:
    return all(n > 0 for _, n in spans) and all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:]))


@functools.lru_cache(maxsize=16384)
def _plan_blocks(q_spans, k_spans, mask: Mask) -> tuple:
    if (q_spans == k_spans and q_spans and mask.causal and tuple(mask.window) == NO_WINDOW
            and mask.cu_seqlens is None and _increasing(q_spans)):
        # A shard against itself, causal only, spans in increasing global order (step 0 of a ring in the
        # contiguous or zigzag layout): local order is global order, so the exact mask is top-left causal
        # over the local rows: one block instead of one per span pair.
        n = sum(m for _, m in q_spans)
        return (Block(0, n, 0, n, True, 0, 0),)
    qo, ko = _starts(q_spans), _starts(k_spans)
    k_end = [ko[i] + k_spans[i][1] for i in range(len(k_spans))]
    rows = []  # (full runs of key span indices, masked key span indices) per query span
    for qsp in q_spans:
        runs, masked = [], []
        for ki, ksp in enumerate(k_spans):
            kind = pair_kind(qsp, ksp, mask)
            if kind == "full":
                if runs and runs[-1][1] == ki:
                    runs[-1] = (runs[-1][0], ki + 1)
                else:
                    runs.append((ki, ki + 1))
            elif kind == "masked":
                masked.append(ki)
        rows.append((runs, masked))
    blocks: list[Block] = []
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1][0] == rows[i][0]:
            j += 1
        q_stop = qo[j] + q_spans[j][1]
        for ks, ke in rows[i][0]:
            blocks.append(Block(qo[i], q_stop, ko[ks], k_end[ke - 1]))
        for qi in range(i, j + 1):
            for km in rows[qi][1]:
                blocks.append(Block(qo[qi], qo[qi] + q_spans[qi][1], ko[km], k_end[km], True, q_spans[qi][0],
                                    k_spans[km][0]))
        i = j + 1
    return tuple(blocks)


def needed_query_slots(q_spans, k_spans, mask: Mask) -> list[int]:
    """Indices of the query spans that see at least one key of ``k_spans`` (TokenRing sends only
    these)."""
    return list(_needed_query_slots(_key(q_spans), _key(k_spans), mask))


@functools.lru_cache(maxsize=16384)
def _needed_query_slots(q_spans, k_spans, mask: Mask) -> tuple:
    return tuple(qi for qi, qsp in enumerate(q_spans) if any(pair_kind(qsp, ksp, mask) != "none" for ksp in k_spans))


def span_rows(spans, slots) -> list[tuple[int, int]]:
    """Local ``(start, stop)`` rows of the spans ``slots``."""
    starts = _starts(spans)
    return [(starts[s], starts[s] + spans[s][1]) for s in slots]


def ring_steps(shards, mask: Mask) -> int:
    """Ring steps needed: 1 + the largest distance ``t`` at which some rank still sees keys of rank
    ``r - t`` (a window that fits in k ranks needs k+1 steps, and only those transfers). Cached."""
    return _ring_steps(tuple(_key(s) for s in shards), mask)


def _sees(q_spans, k_spans, mask) -> bool:
    return any(pair_kind(qs, ks, mask) != "none" for qs in q_spans for ks in k_spans)


@functools.lru_cache(maxsize=1024)
def _ring_steps(shards, mask: Mask) -> int:
    n = len(shards)
    if mask.bounds() == (float("-inf"), float("inf")) and mask.cu_seqlens is None:
        return n  # nothing masked: every rank sees every shard
    for t in range(n - 1, 0, -1):
        if any(_sees(shards[r], shards[(r - t) % n], mask) for r in range(n)):
            return t + 1
    return 1
