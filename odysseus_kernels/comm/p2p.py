"""Point-to-point ring exchange: send to the next rank / receive from the previous one, and the
bidirectional form (also send to the previous / receive from the next), posted as one
``batch_isend_irecv`` so compute can run until the returned handle is waited on."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .collectives import CommHandle, launch
from .groups import group_info
from .ledger import record

# Tags separate the two directions (gloo matches by tag; NCCL matches per peer in posting order,
# which the fixed order below keeps identical on every rank, also when next == prev at N = 2).
_TAG_FORWARD = 11
_TAG_BACKWARD = 12


def _as_list(x) -> list[torch.Tensor]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [x]
    return list(x)


def ring_exchange(send_next: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  recv_prev: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  send_prev: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  recv_next: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  *, group=None) -> CommHandle:
    """Post a ring exchange and return a handle; ``handle.wait()`` returns
    ``(recv_prev, recv_next)`` as given.

    Forward direction: ``send_next[i]`` goes to rank+1 and lands in its ``recv_prev[i]``.
    Backward direction: ``send_prev[i]`` goes to rank-1 and lands in its ``recv_next[i]``.
    Every rank must post the same structure (same number and shapes of tensors per direction).
    With one rank, the sends are copied into the receives (prev == next == self).
    """
    info = group_info(group)
    fwd_s, fwd_r = _as_list(send_next), _as_list(recv_prev)
    bwd_s, bwd_r = _as_list(send_prev), _as_list(recv_next)
    if len(fwd_s) != len(fwd_r) or len(bwd_s) != len(bwd_r):
        raise ValueError("ring_exchange: each direction needs as many receive buffers as sends")
    if info.size == 1:
        for s, r in zip(fwd_s + bwd_s, fwd_r + bwd_r):
            r.copy_(s)
        return CommHandle.done((recv_prev, recv_next))
    nxt, prv = info.global_rank(info.next), info.global_rank(info.prev)
    ops = []
    for s in fwd_s:
        ops.append(dist.P2POp(dist.isend, s, nxt, info.group, _TAG_FORWARD))
    for r in fwd_r:
        ops.append(dist.P2POp(dist.irecv, r, prv, info.group, _TAG_FORWARD))
    for s in bwd_s:
        ops.append(dist.P2POp(dist.isend, s, prv, info.group, _TAG_BACKWARD))
    for r in bwd_r:
        ops.append(dist.P2POp(dist.irecv, r, nxt, info.group, _TAG_BACKWARD))
    nb = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    record("p2p", nb(fwd_s) + nb(bwd_s), nb(fwd_r) + nb(bwd_r))
    device = (fwd_s + bwd_s + fwd_r + bwd_r)[0].device
    works = launch(device, lambda: dist.batch_isend_irecv(ops))
    return CommHandle(works, tuple(fwd_s + fwd_r + bwd_s + bwd_r), (recv_prev, recv_next))
