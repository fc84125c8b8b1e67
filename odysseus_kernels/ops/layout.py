"""Sequence layouts: which tokens of the global sequence each rank holds.

A rank's shard is a list of *spans* ``(global_start, length)`` stored one after the other.

- ``"contiguous"``: rank r holds tokens ``[r*C, (r+1)*C)`` with ``C = L / N``.
- ``"zigzag"``: the sequence is cut into 2N equal chunks; rank r holds chunks ``r`` and
  ``2N-1-r`` concatenated (ring-flash-attn's convention, so shards are interchangeable). With
  causal attention this gives every rank the same work.
- Packed streams (documents given by ``cu_seqlens``, the global cumulative lengths) can be split
  as a stream with the two layouts above (documents may cross rank boundaries, the Llama-3 style),
  or per document: ``"doc_contiguous"`` splits every document into N equal pieces and rank r holds
  piece r of each; ``"doc_zigzag"`` splits every document into 2N pieces and rank r holds pieces r
  and 2N-1-r of each (balanced causal work inside every document). Per-document layouts need every
  document's length divisible by N (2N for zigzag); pad documents to that first.
"""
from __future__ import annotations

import torch

from .._host import host_values
from ..comm import all_gather, group_info, rank_consistent, reduce_scatter

LAYOUTS = ("contiguous", "zigzag", "doc_contiguous", "doc_zigzag")
#: The one package-wide default layout: every helper and every op that takes ``layout=`` defaults to
#: it, so ``gather(op(shard(q), shard(k), shard(v)))`` with all defaults is the single-device result.
DEFAULT_LAYOUT = "contiguous"
Span = tuple[int, int]


def check_dim(dim, ndim: int, what: str) -> int:
    """``dim`` normalised to ``[0, ndim)``; ``ValueError`` when out of range (no modulo wrap)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{what}: dim must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{what}: dim={dim} is out of range for a {ndim}-D tensor "
                         f"(expected {-ndim} <= dim < {ndim})")
    return dim + ndim if dim < 0 else dim


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def pieces_per_rank(layout: str) -> int:
    """How many equal pieces of each unit (the stream, or each document) a rank holds."""
    return 2 if layout.endswith("zigzag") else 1


def layout_chunks(layout: str, world_size: int) -> list[list[int]]:
    """For each rank, the global chunk indices it holds (stream layouts), in local order.

    Contiguous: N chunks, rank r holds ``[r]``; zigzag: 2N chunks, rank r holds ``[r, 2N-1-r]``.
    """
    _check_layout(layout)
    if layout in ("contiguous", "doc_contiguous"):
        return [[r] for r in range(world_size)]
    return [[r, 2 * world_size - 1 - r] for r in range(world_size)]


def normalize_cu_seqlens(cu_seqlens, total: int, what: str) -> tuple[int, ...]:
    """``cu_seqlens`` (list, tuple or 1-D integer tensor) as a tuple, checked: starts at 0, strictly
    increasing, ends at the stream length ``total``. A tensor is read on the host once per tensor
    version (:func:`~odysseus_kernels._host.host_values`: on CUDA the first call synchronises, later
    calls with the same unmodified tensor do not); a list never synchronises."""
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point():
            raise TypeError(f"{what}: cu_seqlens must be a 1-D integer tensor, got {cu_seqlens.dtype} "
                            f"of shape {tuple(cu_seqlens.shape)}")
        cu = tuple(int(x) for x in host_values(cu_seqlens))  # read once per tensor version (odysseus_kernels._host)
    elif isinstance(cu_seqlens, (list, tuple)):
        cu = tuple(int(x) for x in cu_seqlens)
    else:
        raise TypeError(f"{what}: cu_seqlens must be a list or 1-D integer tensor, got {type(cu_seqlens).__name__}")
    if len(cu) < 2 or cu[0] != 0:
        raise ValueError(f"{what}: cu_seqlens must start at 0 and hold at least one document, got {list(cu)}")
    if any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"{what}: cu_seqlens must be strictly increasing (sorted, no empty document), got {list(cu)}")
    if cu[-1] != total:
        raise ValueError(f"{what}: cu_seqlens must end at the stream length {total}, got {cu[-1]}")
    return cu


def layout_spans(layout: str, world_size: int, seq_len: int, cu_seqlens=None) -> list[list[Span]]:
    """Every rank's spans ``(global_start, length)`` for a global sequence of ``seq_len`` tokens.

    ``cu_seqlens`` is needed by the per-document layouts (and checked by them)."""
    _check_layout(layout)
    n, p = world_size, pieces_per_rank(layout)
    if layout in ("contiguous", "zigzag"):
        _check_divisible(seq_len, layout, n, "layout")
        units = [(0, seq_len)]
    else:
        if cu_seqlens is None:
            raise ValueError(f"layout={layout!r} shards each document and needs cu_seqlens")
        cu = normalize_cu_seqlens(cu_seqlens, seq_len, f"layout={layout!r}")
        units = list(zip(cu[:-1], (b - a for a, b in zip(cu, cu[1:]))))
        bad = [m for _, m in units if m % (p * n)]
        if bad:
            raise ValueError(f"layout={layout!r}: every document length must be divisible by {p * n} "
                             f"({'2N' if p == 2 else 'N'} with N={n}); got lengths {[m for _, m in units]} "
                             f"(pad each document, or use layout={layout[4:]!r} to split the stream)")
    spans: list[list[Span]] = [[] for _ in range(n)]
    for start, m in units:
        c = m // (p * n)
        for r in range(n):
            for piece in ([r] if p == 1 else [r, 2 * n - 1 - r]):
                spans[r].append((start + piece * c, c))
    return spans


def local_positions(seq_local: int, *, rank: int, world_size: int, layout: str, cu_seqlens=None,
                    device=None) -> torch.Tensor:
    """Global token positions (int64, ``[seq_local]``) of the local shard of ``rank``."""
    spans = layout_spans(layout, world_size, seq_local * world_size, cu_seqlens)[rank]
    return torch.cat([torch.arange(s, s + m, device=device) for s, m in spans])


def _check_divisible(length: int, layout: str, n: int, what: str) -> None:
    k = n * pieces_per_rank(layout)
    if length % k:
        raise ValueError(
            f"{what}: sequence length {length} is not divisible by {k} "
            f"({'N' if k == n else '2N'} for layout={layout!r} with N={n} ranks)"
        )


def shard_sequence(x: torch.Tensor, *, group=None, layout: str = DEFAULT_LAYOUT, dim: int = 1,
                   cu_seqlens=None) -> torch.Tensor:
    """This rank's shard of the full sequence ``x`` (no communication).

    Args:
        x: the full tensor, identical on every rank, with the sequence along ``dim``
            (e.g. ``[batch, seq, heads, head_dim]``).
        group: the sequence-parallel group (``None`` = default group).
        layout: ``"contiguous"`` (:data:`DEFAULT_LAYOUT`, the default of every op too), ``"zigzag"``,
            ``"doc_contiguous"`` or ``"doc_zigzag"``.
        dim: the sequence dimension (``-x.dim() <= dim < x.dim()``; out of range raises ``ValueError``).
        cu_seqlens: document boundaries of a packed stream (needed by the ``doc_*`` layouts).
    Returns:
        ``x`` restricted to this rank's tokens along ``dim`` (``seq / N`` of them), a view when it
        is one span, a new tensor otherwise.
    Example:
        >>> q_local = ok.shard_sequence(q, layout="zigzag")
    """
    _check_layout(layout)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"shard_sequence: x must be a torch.Tensor, got {type(x).__name__}")
    info = group_info(group)
    dim = check_dim(dim, x.dim(), "shard_sequence")
    _check_divisible(x.shape[dim], layout, info.size, "shard_sequence")
    spans = layout_spans(layout, info.size, x.shape[dim], cu_seqlens)[info.rank]
    parts = [x.narrow(dim, s, m) for s, m in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _rank_major_positions(layout: str, n: int, seq_len: int, cu_seqlens) -> torch.Tensor:
    spans = layout_spans(layout, n, seq_len, cu_seqlens)
    return torch.cat([torch.arange(s, s + m) for rank in spans for s, m in rank])


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, info, layout, dim, cu_seqlens):
        n = info.size
        xs = x.movedim(dim, 0).contiguous()
        if xs.numel() == 0:  # same shape on every rank (checked): nothing to communicate anywhere
            full = xs.new_empty((n * xs.shape[0],) + tuple(xs.shape[1:]))
        else:
            full = all_gather(xs, group=info)  # [N * seq_local, ...] in rank order
        pos = _rank_major_positions(layout, n, full.shape[0], cu_seqlens).to(full.device)
        ctx.info, ctx.dim, ctx.pos = info, dim, pos
        if layout != "contiguous":
            full = full.index_select(0, pos.argsort())
        return full.movedim(0, dim)

    @staticmethod
    def backward(ctx, g):
        # every rank's loss depends on every shard: the shard's gradient is the sum over ranks.
        rank_major = g.movedim(ctx.dim, 0).index_select(0, ctx.pos).contiguous()
        if rank_major.numel() == 0:
            local = rank_major.new_zeros((rank_major.shape[0] // ctx.info.size,) + tuple(rank_major.shape[1:]))
            return local.movedim(0, ctx.dim), None, None, None, None
        return reduce_scatter(rank_major, group=ctx.info).movedim(0, ctx.dim), None, None, None, None


def gather_sequence(x_local: torch.Tensor, *, group=None, layout: str = DEFAULT_LAYOUT, dim: int = 1,
                    cu_seqlens=None) -> torch.Tensor:
    """Inverse of :func:`shard_sequence`: the full sequence in its original token order, on every
    rank (one AllGather). Differentiable: the backward reduce-scatters the gradient to the owners
    (summing the gradients that each rank's use of the full tensor produced).

    Args:
        x_local: this rank's shard, ``seq_local`` tokens along ``dim`` (same shape on every rank).
        layout, cu_seqlens: as given to :func:`shard_sequence`.
    Returns:
        ``[..., seq_local * N, ...]`` (sequence along ``dim``).
    """
    info = group_info(group)
    with rank_consistent("gather_sequence", info) as check:
        _check_layout(layout)
        if not isinstance(x_local, torch.Tensor):
            raise TypeError(f"gather_sequence: x_local must be a torch.Tensor, got {type(x_local).__name__}")
        d = check_dim(dim, x_local.dim(), "gather_sequence")
        check.meta(shape=x_local.shape, dtype=x_local.dtype, layout=layout, dim=d,
                   cu_seqlens=None if cu_seqlens is None else normalize_cu_seqlens(
                       cu_seqlens, x_local.shape[d] * info.size, "gather_sequence"))
        if layout == "zigzag" and x_local.shape[d] % 2:
            raise ValueError(f"gather_sequence: a zigzag shard holds two equal chunks, so its length along "
                             f"dim {d} must be even, got {x_local.shape[d]}")
        layout_spans(layout, info.size, x_local.shape[d] * info.size, cu_seqlens)  # checks doc lengths
    return _GatherSequence.apply(x_local, info, layout, d, cu_seqlens)


class PackedShard:
    """What the SP attention ops and the model need about this rank's part of a packed stream.

    Attributes:
        cu_seqlens: the global cumulative document lengths (pass as ``cu_seqlens=`` to the ops).
        layout: the layout used (pass as ``layout=``).
        positions: ``[seq_local]`` global stream positions of the local tokens.
        position_ids: ``[seq_local]`` positions inside their document (for RoPE: restart at 0 per document).
    """

    def __init__(self, cu_seqlens: tuple[int, ...], layout: str, positions: torch.Tensor):
        self.cu_seqlens, self.layout, self.positions = cu_seqlens, layout, positions
        cu = torch.tensor(cu_seqlens, device=positions.device)
        self.position_ids = positions - cu[torch.searchsorted(cu, positions, right=True) - 1]

    def __repr__(self) -> str:
        return f"PackedShard(layout={self.layout!r}, cu_seqlens={self.cu_seqlens}, tokens={self.positions.numel()})"


def shard_packed(x: torch.Tensor, cu_seqlens, *, group=None, layout: str = "doc_zigzag", dim: int = 1):
    """Shard a packed stream of documents.

    Args:
        x: the full packed stream, sequence along ``dim`` (e.g. ``input_ids [B, L]``).
        cu_seqlens: global cumulative document lengths ``[0, l0, l0+l1, ..., L]`` (list or int tensor).
        layout: ``"doc_zigzag"`` / ``"doc_contiguous"`` (every document split across the ranks:
            balanced; each document length must divide by 2N / N — pad documents first) or
            ``"zigzag"`` / ``"contiguous"`` (the stream split as is; documents may cross ranks).
    Returns:
        ``(x_local, meta)``: this rank's tokens and a :class:`PackedShard` (pass ``meta.cu_seqlens``
        and ``meta.layout`` to the attention ops, ``meta.position_ids`` to RoPE).
    Example::

        ids_local, meta = ok.shard_packed(ids, [0, 96, 160, 256], layout="doc_zigzag")
        out = ok.ring_attention(q, k, v, causal=True, layout=meta.layout, cu_seqlens=meta.cu_seqlens)
    """
    info = group_info(group)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"shard_packed: x must be a torch.Tensor, got {type(x).__name__}")
    dim = check_dim(dim, x.dim(), "shard_packed")
    cu = normalize_cu_seqlens(cu_seqlens, x.shape[dim], "shard_packed")
    x_local = shard_sequence(x, group=info, layout=layout, dim=dim, cu_seqlens=cu)
    pos = local_positions(x_local.shape[dim], rank=info.rank, world_size=info.size, layout=layout, cu_seqlens=cu,
                          device=x.device)
    return x_local, PackedShard(cu, layout, pos)


def gather_packed(x_local: torch.Tensor, meta: PackedShard, *, group=None, dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`shard_packed` (one AllGather; differentiable like :func:`gather_sequence`)."""
    return gather_sequence(x_local, group=group, layout=meta.layout, dim=dim, cu_seqlens=meta.cu_seqlens)
