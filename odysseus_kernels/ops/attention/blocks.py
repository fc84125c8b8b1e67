"""Which attention blocks a shard of queries computes against a shard of keys.

A shard is an ordered list of global chunk indices (all chunks ``c`` tokens long), stored
concatenated: contiguous layout gives rank r ``[r]``, zigzag ``[r, 2N-1-r]``, and a USP Ulysses
group the union of its members' chunks. Every ring variant (contiguous, zigzag, TokenRing, USP's
ring, all-gather-KV, RSA) plans its blocks here from chunk lists, so the mask (causal, sliding
window) is exact whatever the layout and no work is spent on fully masked chunk pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

NO_WINDOW = (-1, -1)


@dataclass(frozen=True)
class Block:
    """Queries ``[q_start, q_stop)`` (local token slots) against keys ``[k_start, k_stop)``.

    ``masked`` blocks are a single chunk pair that is partly visible: the kernel applies the
    causal / window mask at global offsets ``q_offset`` / ``k_offset``. Other blocks are fully
    visible (no mask).
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

    def work(self, causal: bool = True, window=NO_WINDOW) -> int:
        """Score entries this block needs (the unit of the balance test)."""
        nq, nk = self.q_stop - self.q_start, self.k_stop - self.k_start
        if not self.masked:
            return nq * nk
        lo, hi = _bounds(causal, window)
        return sum(max(0, min(nk - 1, i + self.q_offset - self.k_offset + hi)
                       - max(0, i + self.q_offset - self.k_offset + lo) + 1)
                   for i in range(nq))


def _bounds(causal: bool, window) -> tuple[float, float]:
    """Allowed range of ``kpos - qpos``."""
    left, right = window
    lo = -left if left >= 0 else float("-inf")
    hi = right if right >= 0 else float("inf")
    if causal:
        hi = min(hi, 0)
    return lo, hi


def pair_kind(qc: int, kc: int, causal: bool, c: int = 1, window=NO_WINDOW) -> str:
    """``"full"``, ``"masked"`` or ``"none"`` for query chunk ``qc`` against key chunk ``kc``."""
    lo, hi = _bounds(causal, window)
    d_min, d_max = (kc - qc) * c - (c - 1), (kc - qc) * c + (c - 1)
    if d_max < lo or d_min > hi:
        return "none"
    if d_min >= lo and d_max <= hi:
        return "full"
    return "masked"


def plan_blocks(q_chunks: list[int], k_chunks: list[int], c: int, causal: bool, window=NO_WINDOW) -> list[Block]:
    """Blocks covering exactly the visible (query, key) pairs, coalesced where no mask is needed:
    runs of adjacent fully-visible key chunks of a query chunk form one block, and adjacent query
    chunks with the same fully-visible key runs share it."""
    rows = []  # (full runs of key slots, masked key slots) per query slot
    for qc in q_chunks:
        runs, masked = [], []
        for ki, kc in enumerate(k_chunks):
            kind = pair_kind(qc, kc, causal, c, window)
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
        for ks, ke in rows[i][0]:
            blocks.append(Block(i * c, (j + 1) * c, ks * c, ke * c))
        for qi in range(i, j + 1):
            for km in rows[qi][1]:
                blocks.append(Block(qi * c, (qi + 1) * c, km * c, (km + 1) * c, True, q_chunks[qi] * c,
                                    k_chunks[km] * c))
        i = j + 1
    return blocks


def needed_query_slots(q_chunks: list[int], k_chunks: list[int], causal: bool, c: int = 1,
                       window=NO_WINDOW) -> list[int]:
    """Local slots of the query chunks that see at least one key of ``k_chunks`` (TokenRing sends
    only these)."""
    return [qi for qi, qc in enumerate(q_chunks)
            if any(pair_kind(qc, kc, causal, c, window) != "none" for kc in k_chunks)]


def ring_steps(chunks: list[list[int]], c: int, causal: bool, window=NO_WINDOW) -> int:
    """Ring steps needed: 1 + the largest distance ``t`` at which some rank still sees keys of rank
    ``r - t`` (a window that fits in k ranks needs k+1 steps, and only those transfers)."""
    n = len(chunks)
    far = 0
    for t in range(1, n):
        if any(plan_blocks(chunks[r], chunks[(r - t) % n], c, causal, window) for r in range(n)):
            far = t
    return far + 1
