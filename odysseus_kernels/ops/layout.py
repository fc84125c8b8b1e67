"""Sequence layouts: which tokens of the global sequence each rank holds.

- ``"contiguous"``: rank r holds tokens ``[r*C, (r+1)*C)`` with ``C = L / N``.
- ``"zigzag"``: the sequence is cut into 2N equal chunks; rank r holds chunks ``r`` and
  ``2N-1-r`` concatenated (ring-flash-attn's convention, so shards are interchangeable). With
  causal attention this gives every rank the same work.
"""
from __future__ import annotations

import torch

from ..comm import all_gather, group_info, rank_consistent, reduce_scatter

LAYOUTS = ("contiguous", "zigzag")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def layout_chunks(layout: str, world_size: int) -> list[list[int]]:
    """For each rank, the global chunk indices it holds, in local order.

    Contiguous: N chunks, rank r holds ``[r]``; zigzag: 2N chunks, rank r holds ``[r, 2N-1-r]``.
    """
    _check_layout(layout)
    if layout == "contiguous":
        return [[r] for r in range(world_size)]
    return [[r, 2 * world_size - 1 - r] for r in range(world_size)]


def local_positions(seq_local: int, *, rank: int, world_size: int, layout: str,
                    device=None) -> torch.Tensor:
    """Global token positions (int64, ``[seq_local]``) of the local shard of ``rank``."""
    chunks = layout_chunks(layout, world_size)[rank]
    c = seq_local // len(chunks)
    return torch.cat([torch.arange(i * c, (i + 1) * c, device=device) for i in chunks])


def _num_chunks(layout: str, n: int) -> int:
    return n if layout == "contiguous" else 2 * n


def _check_divisible(length: int, layout: str, n: int, what: str) -> None:
    k = _num_chunks(layout, n)
    if length % k:
        raise ValueError(
            f"{what}: sequence length {length} is not divisible by {k} "
            f"({'N' if layout == 'contiguous' else '2N'} for layout={layout!r} with N={n} ranks)"
        )


def shard_sequence(x: torch.Tensor, *, group=None, layout: str = "contiguous", dim: int = 1) -> torch.Tensor:
    """This rank's shard of the full sequence ``x`` (no communication).

    Args:
        x: the full tensor, identical on every rank, with the sequence along ``dim``
            (e.g. ``[batch, seq, heads, head_dim]``).
        group: the sequence-parallel group (``None`` = default group).
        layout: ``"contiguous"`` or ``"zigzag"``.
        dim: the sequence dimension.
    Returns:
        ``x`` restricted to this rank's tokens along ``dim`` (``seq / N`` of them), a view when
        contiguous, a new tensor for zigzag.
    Example:
        >>> q_local = ok.shard_sequence(q, layout="zigzag")
    """
    _check_layout(layout)
    info = group_info(group)
    dim = dim % x.dim()
    _check_divisible(x.shape[dim], layout, info.size, "shard_sequence")
    pieces = x.chunk(_num_chunks(layout, info.size), dim=dim)
    parts = [pieces[i] for i in layout_chunks(layout, info.size)[info.rank]]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _rank_order_to_natural(layout: str, n: int) -> list[int]:
    """Permutation: natural chunk i is at position perm[i] of the rank-major concatenation."""
    order = [c for chunks in layout_chunks(layout, n) for c in chunks]
    perm = [0] * len(order)
    for pos, c in enumerate(order):
        perm[c] = pos
    return perm


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, info, layout, dim):
        ctx.info, ctx.layout, ctx.dim = info, layout, dim
        n = info.size
        xs = x.movedim(dim, 0).contiguous()
        full = all_gather(xs, group=info)  # [N * seq_local, ...] in rank order
        k = _num_chunks(layout, n)
        pieces = full.chunk(k, dim=0)
        perm = _rank_order_to_natural(layout, n)
        out = torch.cat([pieces[perm[i]] for i in range(k)], dim=0) if layout != "contiguous" else full
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx, g):
        info, layout, dim = ctx.info, ctx.layout, ctx.dim
        gs = g.movedim(dim, 0)
        k = _num_chunks(layout, info.size)
        pieces = gs.chunk(k, dim=0)
        order = [c for chunks in layout_chunks(layout, info.size) for c in chunks]
        rank_major = torch.cat([pieces[c] for c in order], dim=0).contiguous()
        # every rank's loss depends on every shard: the shard's gradient is the sum over ranks.
        return reduce_scatter(rank_major, group=info).movedim(0, dim), None, None, None


def gather_sequence(x_local: torch.Tensor, *, group=None, layout: str = "contiguous", dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`shard_sequence`: the full sequence in its original token order, on every
    rank (one AllGather). Differentiable: the backward reduce-scatters the gradient to the owners
    (summing the gradients that each rank's use of the full tensor produced).

    Args:
        x_local: this rank's shard, ``seq_local`` tokens along ``dim`` (same shape on every rank).
    Returns:
        ``[..., seq_local * N, ...]`` (sequence along ``dim``).
    """
    info = group_info(group)
    with rank_consistent("gather_sequence", info) as check:
        _check_layout(layout)
        if not isinstance(x_local, torch.Tensor):
            raise TypeError(f"gather_sequence: x_local must be a torch.Tensor, got {type(x_local).__name__}")
        d = dim % x_local.dim()
        check.meta(shape=x_local.shape, dtype=x_local.dtype, layout=layout, dim=d)
        if layout == "zigzag" and x_local.shape[d] % 2:
            raise ValueError(f"gather_sequence: a zigzag shard holds two equal chunks, so its length along "
                             f"dim {d} must be even, got {x_local.shape[d]}")
    return _GatherSequence.apply(x_local, info, layout, d)
