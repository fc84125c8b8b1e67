"""Ring schedules: for step ``s`` on rank ``r``, which blocks of attention to compute, and what
travels where. Pure arithmetic (no tensors, no communication), so it is tested on its own.

Every ring variant runs the one driver in :mod:`.driver`; a :class:`RingSchedule` is the only thing
that differs between them. It is the product of

- a **layout** (which global tokens each rank holds, :func:`~odysseus_kernels.ops.layout.layout_chunks`):
  ``"contiguous"`` or ``"zigzag"``; together with ``causal`` it decides which blocks of a pair of
  shards (queries of rank ``a`` x keys of rank ``b``) are visible, and
- a **rotation** (who visits whom at step ``s``):

  - ``"kv"`` (ring attention): K/V travel forward one hop per step, so at step ``s`` rank ``r``
    holds the K/V of rank ``(r - s) mod N`` and computes the pair ``(q: r, k: r - s)``;
  - ``"query"`` (TokenRing): K/V stay; at step ``s`` rank ``r`` receives the queries of rank
    ``(r - s) mod N`` straight from their owner and computes the pair ``(q: r - s, k: r)``.

Forward and backward of a variant share its schedule. Zigzag balance: with ``causal`` every pair
of different ranks has exactly half a block of visible scores (either all local queries against
the first half of the keys, or the second half of the queries against all keys), so every rank
does the same work at every step (:meth:`RingSchedule.work`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..layout import LAYOUTS, layout_chunks

ROTATIONS = ("kv", "query")


@dataclass(frozen=True)
class Block:
    """One call of the block kernel: ``q`` rows of the query owner's shard against ``k`` rows of
    the key owner's shard.

    ``causal`` / ``q_offset`` / ``k_offset`` are passed to the kernel as they are (mask
    ``k_offset + j <= q_offset + i``). The offsets are the global positions of the first row of
    each slice. Blocks between two different ranks are always fully visible (``causal=False``);
    the only causal block is a rank's own shard against itself, where queries and keys are the
    same tokens, so the mask depends only on their order, which every layout keeps (for zigzag the
    two chunks are not adjacent, but their concatenation is still in increasing position order).
    """

    q: slice
    k: slice
    causal: bool
    q_offset: int = 0
    k_offset: int = 0

    @property
    def rows(self) -> int:
        return self.q.stop - self.q.start

    @property
    def cols(self) -> int:
        return self.k.stop - self.k.start

    def work(self) -> int:
        """Number of visible (unmasked) score entries of this block, as the kernel masks it."""
        if not self.causal:
            return self.rows * self.cols
        # row i sees keys j with j <= i + d, i.e. clamp(i + d + 1, 0, cols) of them
        d = self.q_offset - self.k_offset
        return _sum_clamped(d + 1, d + self.rows, self.cols)


def _sum_clamped(lo: int, hi: int, cap: int) -> int:
    """sum of clamp(x, 0, cap) for integer x in [lo, hi] (closed form, sizes can be large)."""
    if hi < lo:
        return 0
    total = 0
    a, b = max(lo, 1), min(hi, cap)  # the linear part x in [1, cap]
    if a <= b:
        total += (a + b) * (b - a + 1) // 2
    a = max(lo, cap + 1)  # the saturated part x > cap
    if a <= hi:
        total += cap * (hi - a + 1)
    return total


def pair_blocks(layout: str, causal: bool, world_size: int, q_rank: int, k_rank: int,
                seq_local: int) -> tuple[Block, ...]:
    """The blocks of attention between the local queries of ``q_rank`` and the local keys of
    ``k_rank`` (rows are local indices of each shard). Empty when nothing is visible.

    Works chunk by chunk (a shard is 1 chunk for contiguous, 2 for zigzag): with ``causal`` a
    query chunk sees a key chunk fully when it comes later in the sequence, not at all when
    earlier. The fully visible chunk pairs of two different ranks always form one rectangle for
    these layouts, so a pair is one kernel call; any other pattern falls back to a call per chunk
    pair.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    chunks = layout_chunks(layout, world_size)
    qc, kc = chunks[q_rank], chunks[k_rank]
    piece = seq_local // len(qc)
    pos = lambda ch, i: ch[i] * piece  # noqa: E731 - global position of the first token of chunk i
    everything = slice(0, seq_local)
    if not causal:
        return (Block(everything, everything, False, pos(qc, 0), pos(kc, 0)),)
    if q_rank == k_rank:
        return (Block(everything, everything, True, pos(qc, 0), pos(kc, 0)),)
    full = [(i, j) for i in range(len(qc)) for j in range(len(kc)) if qc[i] > kc[j]]
    if not full:
        return ()
    qi = sorted({i for i, _ in full})
    kj = sorted({j for _, j in full})
    rect = len(full) == len(qi) * len(kj) and qi == list(range(qi[0], qi[-1] + 1)) \
        and kj == list(range(kj[0], kj[-1] + 1))
    if rect:
        return (Block(slice(qi[0] * piece, (qi[-1] + 1) * piece), slice(kj[0] * piece, (kj[-1] + 1) * piece),
                      False, pos(qc, qi[0]), pos(kc, kj[0])),)
    return tuple(Block(slice(i * piece, (i + 1) * piece), slice(j * piece, (j + 1) * piece), False,
                       pos(qc, i), pos(kc, j)) for i, j in full)


class RingSchedule:
    """Which blocks rank ``r`` computes at step ``s`` of a ring, and which query rows travel.

    Args:
        layout: ``"contiguous"`` or ``"zigzag"`` (how the sequence is sharded).
        causal: causal attention over the global sequence.
        world_size: N, the ring size (the schedule has N steps; step 0 is the local pair).
        seq_local: tokens per rank (even for zigzag).
        rotation: ``"kv"`` (ring attention: K/V travel) or ``"query"`` (TokenRing: queries travel).
    Example:
        >>> s = RingSchedule(layout="zigzag", causal=True, world_size=4, seq_local=8)
        >>> [s.work(r, 1) for r in range(4)]
        [32, 32, 32, 32]
    """

    def __init__(self, *, layout: str, causal: bool, world_size: int, seq_local: int, rotation: str = "kv"):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if layout == "zigzag" and seq_local % 2:
            raise ValueError(f"seq_local must be even for layout='zigzag', got {seq_local}")
        self.layout, self.causal, self.world_size = layout, bool(causal), world_size
        self.seq_local, self.rotation = seq_local, rotation
        self._cache: dict[tuple[int, int], tuple[Block, ...]] = {}

    @property
    def num_steps(self) -> int:
        return self.world_size

    def pair(self, rank: int, step: int) -> tuple[int, int]:
        """``(query owner, key owner)`` of the blocks rank ``rank`` computes at ``step``."""
        other = (rank - step) % self.world_size
        return (rank, other) if self.rotation == "kv" else (other, rank)

    def pair_blocks(self, q_owner: int, k_owner: int) -> tuple[Block, ...]:
        """Blocks between two shards (cached); rows are local indices of each owner's shard."""
        key = (q_owner, k_owner)
        blocks = self._cache.get(key)
        if blocks is None:
            blocks = self._cache[key] = pair_blocks(self.layout, self.causal, self.world_size, q_owner, k_owner,
                                                    self.seq_local)
        return blocks

    def blocks(self, rank: int, step: int) -> tuple[Block, ...]:
        """Blocks rank ``rank`` computes at ``step`` (rows: local indices of each owner's shard)."""
        return self.pair_blocks(*self.pair(rank, step))

    def work(self, rank: int, step: int) -> int:
        """Visible score entries rank ``rank`` computes at ``step`` (per batch element and head)."""
        return sum(b.work() for b in self.blocks(rank, step))

    def query_rows(self, q_owner: int, k_owner: int) -> slice:
        """Rows of ``q_owner``'s queries that meet ``k_owner``'s keys (``slice(0, 0)`` if none): what
        a TokenRing sends. With zigzag and causal this is the second half or everything."""
        blocks = self.pair_blocks(q_owner, k_owner)
        if not blocks:
            return slice(0, 0)
        return slice(min(b.q.start for b in blocks), max(b.q.stop for b in blocks))
