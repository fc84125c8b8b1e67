"""Ulysses (DeepSpeed-Ulysses) attention and USP (Ulysses x ring).

Ulysses: an all-to-all turns sequence shards ``[B, C, H, D]`` into head shards
``[B, N*C, H/N, D]`` (every rank gets the whole sequence for H/N heads), local attention runs over
the full sequence, and an all-to-all turns the output back. Forward: 4 all-to-alls (q, k, v, out),
each moving (N-1)/N of the local tensor; backward the 4 conjugates (dout, dq, dk, dv).
Key/value heads must divide by N; when there are fewer kv heads than ranks and N is a multiple of
them, each kv head is repeated N/H_kv times before the all-to-all (the Ulysses way of serving GQA
with a large degree; it moves N/H_kv times more K/V) — otherwise a clear error.

USP: Ulysses inside ``ulysses_group`` (size U), then ring attention across ``ring_group`` (size R)
on the head shards. The sequence is sharded over the U*R ranks at position
``p = ring_rank * U + ulysses_rank`` (what :func:`usp_groups` builds: consecutive ranks form a
Ulysses group); after the all-to-all a ring rank holds the chunks of its whole Ulysses group, and
the ring plans exact blocks for those chunk lists whatever the layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...comm import all_to_all, group_info, new_group, on_forget, rank_consistent
from ...kernels.device_cache import DeviceCache
from ..local_attention import local_attention
from .common import (DEFAULT_LAYOUT, empty_attention, is_empty, resolve_layout, scale_of, validate_qkv,
                     validated_layout)
from .ring import ring_attention_spans


class _AllToAll(torch.autograd.Function):
    """``[B, C, H, D]`` sequence shard <-> ``[B, N*C, H/N, D]`` head shard (rank-major sequence):
    :func:`seq_to_heads` when ``to_heads``, else :func:`heads_to_seq`; backward runs the other one."""

    @staticmethod
    def forward(ctx, x, info, to_heads):
        ctx.info, ctx.to_heads = info, to_heads
        return (seq_to_heads if to_heads else heads_to_seq)(x, info)

    @staticmethod
    def backward(ctx, g):
        return (heads_to_seq if ctx.to_heads else seq_to_heads)(g, ctx.info), None, None


def seq_to_heads(x: torch.Tensor, info) -> torch.Tensor:
    n = info.size
    b, c, h, d = x.shape
    send = x.reshape(b, c, n, h // n, d).permute(2, 0, 1, 3, 4).contiguous()  # [N, B, C, H/N, D]
    recv = all_to_all(send, group=info)  # [N (source rank), B, C, H/N, D]
    return recv.permute(1, 0, 2, 3, 4).reshape(b, n * c, h // n, d)


def heads_to_seq(y: torch.Tensor, info) -> torch.Tensor:
    n = info.size
    b, l, hn, d = y.shape
    send = y.reshape(b, n, l // n, hn, d).permute(1, 0, 2, 3, 4).contiguous()  # [N (dest rank), B, C, H/N, D]
    recv = all_to_all(send, group=info)  # [N (head group), B, C, H/N, D]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, l // n, n * hn, d)


def lse_heads_to_seq(lse: torch.Tensor, info) -> torch.Tensor:
    """``[B, H/N, N*C]`` head-shard log-sum-exp (rank-major rows) -> ``[B, H, C]`` sequence shard."""
    with torch.no_grad():
        y = heads_to_seq(lse.transpose(1, 2).unsqueeze(-1), info)  # [B, C, H, 1]
    return y.squeeze(-1).transpose(1, 2).contiguous()


def ulysses_kv_heads(op: str, heads: int, kv_heads: int, n: int, what: str = "the Ulysses group size",
                     q_name: str = "q heads") -> int:
    """The Ulysses head rule, once for the op and the cost model: ``heads`` must divide by ``n``, and
    ``kv_heads`` divide by ``n`` or divide it (each kv head is then repeated ``n / kv_heads`` times
    before the all-to-all). Returns the kv heads that travel (``kv_heads`` or ``n``); raises ``ValueError``."""
    if heads % n:
        raise ValueError(f"{op}: {q_name} ({heads}) must be divisible by {what} ({n})")
    if kv_heads % n and n % kv_heads:
        raise ValueError(f"{op}: k/v heads ({kv_heads}) must be divisible by {what} ({n}), or divide it "
                         f"(then each kv head is repeated); got {kv_heads} kv heads for {n} ranks")
    return kv_heads if kv_heads % n == 0 else n


def _check_heads(op, q, k, n, what="the Ulysses group size"):
    ulysses_kv_heads(op, q.shape[2], k.shape[2], n, what)


def _expand_kv(k, v, n):
    """Repeat kv heads so that every rank gets one when there are fewer kv heads than ranks."""
    hkv = k.shape[2]
    if hkv % n == 0:
        return k, v
    rep = n // hkv
    return k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)


def _build_natural_order(spans, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.cat([torch.arange(s, s + m, device=device) for rank in spans for s, m in rank])
    return pos.argsort(), pos


# Row permutation from the rank-major concatenation of every rank's spans (nested tuples) to token order,
# and back, on ``device`` (a str): built on the device once per layout (no host read), then reused (no launch
# per call; warm up before capturing a graph)
_natural_order = DeviceCache(_build_natural_order, maxsize=256)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                      softmax_scale: float | None = None, layout: str = DEFAULT_LAYOUT,
                      window_size: tuple[int, int] = (-1, -1), cu_seqlens=None, return_lse: bool = False,
                      backend: str = "auto"):
    """Ulysses attention: all-to-all to head shards, local attention over the full sequence, back.

    Args:
        q: ``[B, C, H, D]``; k, v: ``[B, C, H_kv, D]``, sequence shards in ``layout`` (contiguous, or
            zigzag: rows are put in token order after the all-to-all). ``H`` must divide by N;
            ``H_kv`` must divide by N or divide N (kv heads are then repeated).
        group, causal, softmax_scale, window_size, cu_seqlens, return_lse, backend: as in
            :func:`ring_attention`.
    Returns:
        ``[B, C, H, D]`` in ``q.dtype`` (``(out, lse)`` with ``return_lse=True``: one more all-to-all,
        of the fp32 lse).
    Communication: 4 all-to-alls forward (q, k, v, out) and 4 backward, each (N-1)/N of the local
    tensor (k and v after any kv-head repetition).
    Example::

        out = ok.ulysses_attention(q_local, k_local, v_local, causal=True)
    """
    info = group_info(group)
    spans, mask = validated_layout("ulysses_attention", info, q, k, v, layout=layout, causal=causal,
                                   softmax_scale=softmax_scale, window_size=window_size, cu_seqlens=cu_seqlens,
                                   more=lambda: _check_heads("ulysses_attention", q, k, info.size))
    if is_empty(q, k):
        return empty_attention(q, k, v, return_lse)
    scale = scale_of(q, softmax_scale)
    n = info.size
    k, v = _expand_kv(k, v, n)
    qh, kh, vh = (_AllToAll.apply(t, info, True) for t in (q, k, v))
    kw = dict(causal=causal, softmax_scale=scale, window_size=mask.window, cu_seqlens=mask.cu_seqlens,
              return_lse=True, backend=backend)
    if layout == "contiguous":
        o, lse = local_attention(qh, kh, vh, **kw)
    else:  # rows arrive rank-major: attend in token order, then put them back
        to_nat, back = _natural_order(spans, str(q.device))
        o, lse = local_attention(*(t.index_select(1, to_nat) for t in (qh, kh, vh)), **kw)
        o, lse = o.index_select(1, back), lse.index_select(2, back)
    out = _AllToAll.apply(o, info, False)
    return (out, lse_heads_to_seq(lse, info)) if return_lse else out


def ulysses_comm_bytes(world, batch, seq_local, heads, kv_heads, head_dim, elem_bytes) -> dict:
    """Closed-form bytes received per rank (ledger kind ``all_to_all``), forward and backward."""
    kvh = kv_heads if kv_heads % world == 0 else world  # the kv heads that travel (ulysses_kv_heads)
    per = batch * seq_local * head_dim * elem_bytes * (world - 1) // world
    fwd = per * (2 * heads + 2 * kvh)
    return {"forward": fwd, "backward": fwd}


@dataclass(frozen=True)
class USPGroups:
    """The two groups of USP on this rank (see :func:`usp_groups`)."""

    ulysses_group: object
    ring_group: object
    ulysses_degree: int
    ring_degree: int


_usp_cache: dict = {}  # (parent process group, ulysses degree) -> USPGroups


def _forget_usp(group) -> None:
    """``comm.forget_group`` hook: drop the USP groups built over, or made of, ``group``."""
    for key, g in list(_usp_cache.items()):
        if group in (key[0], g.ulysses_group, g.ring_group):
            del _usp_cache[key]


on_forget(_forget_usp)


def usp_groups(ulysses_degree: int, group=None) -> USPGroups:
    """Build USP's groups over ``group`` (default: the world): consecutive ranks form a Ulysses group
    of ``ulysses_degree`` ranks; ranks with the same Ulysses index form a ring. Every rank of the
    world must call this (torch.distributed creates groups collectively). The groups are cached per
    ``(group, ulysses_degree)`` for the life of ``group`` (as comm's control groups are): later calls
    return the same groups and create none; ``ok.comm.forget_group(g)`` before destroying one of them
    (or the parent) drops the entry, and the next call builds new groups.
    """
    info = group_info(group)
    if ulysses_degree < 1 or info.size % ulysses_degree:
        raise ValueError(f"usp_groups: ulysses_degree ({ulysses_degree}) must divide the group size ({info.size})")
    if info.group is None:  # the implicit world of one (torch.distributed not initialised): nothing to create
        return USPGroups(None, None, 1, 1)
    key = (info.group, ulysses_degree)
    if key in _usp_cache:
        return _usp_cache[key]
    u, r = ulysses_degree, info.size // ulysses_degree
    members = [info.global_rank(i) for i in range(info.size)]
    ug = rg = None
    for i in range(r):
        g = new_group(members[i * u:(i + 1) * u])
        if info.rank // u == i:
            ug = g
    for j in range(u):
        g = new_group(members[j::u])
        if info.rank % u == j:
            rg = g
    groups = USPGroups(ug, rg, u, r)
    _usp_cache[key] = groups
    return groups


def usp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, ulysses_group, ring_group,
                  causal: bool = False, softmax_scale: float | None = None, layout: str = DEFAULT_LAYOUT,
                  window_size: tuple[int, int] = (-1, -1), cu_seqlens=None, return_lse: bool = False,
                  backend: str = "auto"):
    """USP: Ulysses inside ``ulysses_group`` and ring attention across ``ring_group``.

    Args:
        q: ``[B, C, H, D]``; k, v: ``[B, C, H_kv, D]``: this rank's shard of the sequence, sharded in
            ``layout`` over the ``U*R`` ranks at position ``ring_rank * U + ulysses_rank``
            (:func:`usp_groups` builds groups with that order, so with the default world the position
            is the global rank). Heads divide by U as in :func:`ulysses_attention`.
        causal, softmax_scale, window_size, cu_seqlens, return_lse, backend: as in :func:`ring_attention`.
    Returns:
        ``[B, C, H, D]`` in ``q.dtype`` (``(out, lse)`` with ``return_lse=True``).
    Communication: Ulysses's 4 all-to-alls within the Ulysses group (on U*C tokens' worth of rows),
    plus ring attention's P2P across the ring group on the head shards (H_kv/U heads, U*C tokens).
    Example::

        g = ok.usp_groups(ulysses_degree=2)
        out = ok.usp_attention(q, k, v, ulysses_group=g.ulysses_group, ring_group=g.ring_group, causal=True)
    """
    ui, ri = group_info(ulysses_group), group_info(ring_group)
    # Nested so that every rank joins both checks: an error inside one Ulysses group is carried
    # by the outer ring-group check to the other groups (each ring group meets each Ulysses group).
    with rank_consistent("usp_attention", ring_group) as outer:
        with rank_consistent("usp_attention", ulysses_group) as check:
            validate_qkv("usp_attention", check, q, k, v, layout=layout, causal=causal,
                         softmax_scale=softmax_scale, extra={"ring_size": ri.size, "window_size": window_size},
                         cu_seqlens=cu_seqlens)
            spans, mask = resolve_layout("usp_attention", layout, ui.size * ri.size, q.shape[1], causal, window_size,
                                         cu_seqlens)
            _check_heads("usp_attention", q, k, ui.size, "the Ulysses degree")
        outer.meta(q=tuple(q.shape), k=tuple(k.shape), causal=causal, layout=layout, ulysses=ui.size,
                   softmax_scale=softmax_scale, window_size=mask.window, cu_seqlens=mask.cu_seqlens)
    if is_empty(q, k):
        return empty_attention(q, k, v, return_lse)
    u, r = ui.size, ri.size
    scale = scale_of(q, softmax_scale)
    k, v = _expand_kv(k, v, u)
    qh, kh, vh = (_AllToAll.apply(t, ui, True) for t in (q, k, v))
    ring_spans = [[sp for p in range(i * u, (i + 1) * u) for sp in spans[p]] for i in range(r)]
    o, lse = ring_attention_spans(qh, kh, vh, info=ri, spans=ring_spans, mask=mask, scale=scale, backend=backend)
    out = _AllToAll.apply(o, ui, False)
    return (out, lse_heads_to_seq(lse, ui)) if return_lse else out
