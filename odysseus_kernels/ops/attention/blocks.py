"""Which attention blocks a shard of queries computes against a shard of keys.

A shard is an ordered list of global chunk indices (all chunks ``c`` tokens long), stored
concatenated: contiguous layout gives rank r ``[r]``, zigzag ``[r, 2N-1-r]``, and a USP Ulysses
group the union of its members' chunks. Every ring variant (contiguous, zigzag, TokenRing, USP's
ring) plans its blocks here from chunk lists, so the mask is exact whatever the layout and no work
is spent on fully masked chunk pairs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """Queries ``[q_start, q_stop)`` (local token slots) against keys ``[k_start, k_stop)``.

    ``causal`` blocks are diagonal chunk pairs (same global chunk): the mask is the causal one
    aligned at the diagonal (``q_offset == k_offset``); other blocks need no mask.
    """

    q_start: int
    q_stop: int
    k_start: int
    k_stop: int
    causal: bool

    @property
    def q(self) -> slice:
        return slice(self.q_start, self.q_stop)

    @property
    def k(self) -> slice:
        return slice(self.k_start, self.k_stop)

    def work(self) -> int:
        """Score entries computed (the unit of the balance test)."""
        nq, nk = self.q_stop - self.q_start, self.k_stop - self.k_start
        return nq * (nq + 1) // 2 if self.causal else nq * nk


def pair_kind(qc: int, kc: int, causal: bool) -> str:
    """``"full"``, ``"diag"`` or ``"none"`` for query chunk ``qc`` against key chunk ``kc``."""
    if not causal or kc < qc:
        return "full"
    return "diag" if kc == qc else "none"


def plan_blocks(q_chunks: list[int], k_chunks: list[int], c: int, causal: bool) -> list[Block]:
    """Blocks covering exactly the visible (query, key) pairs, coalesced where no mask is needed:
    runs of adjacent fully-visible key chunks of a query chunk form one block, and adjacent query
    chunks with the same fully-visible key run share it."""
    rows = []  # (q slot, [(k_start_slot, k_stop_slot)], [diag k slots])
    for qi, qc in enumerate(q_chunks):
        runs, diags = [], []
        for ki, kc in enumerate(k_chunks):
            kind = pair_kind(qc, kc, causal)
            if kind == "full":
                if runs and runs[-1][1] == ki:
                    runs[-1] = (runs[-1][0], ki + 1)
                else:
                    runs.append((ki, ki + 1))
            elif kind == "diag":
                diags.append(ki)
        rows.append((qi, runs, diags))
    blocks: list[Block] = []
    # merge adjacent query slots whose full runs are identical
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1][1] == rows[i][1]:
            j += 1
        for ks, ke in rows[i][1]:
            blocks.append(Block(i * c, (j + 1) * c, ks * c, ke * c, False))
        for qi in range(i, j + 1):
            for kd in rows[qi][2]:
                blocks.append(Block(qi * c, (qi + 1) * c, kd * c, (kd + 1) * c, True))
        i = j + 1
    return blocks


def needed_query_slots(q_chunks: list[int], k_chunks: list[int], causal: bool) -> list[int]:
    """Local slots of the query chunks that see at least one key of ``k_chunks`` (TokenRing sends
    only these)."""
    return [qi for qi, qc in enumerate(q_chunks) if any(pair_kind(qc, kc, causal) != "none" for kc in k_chunks)]
