"""Point-to-point ring exchange: send to the next rank / receive from the previous one, and the
bidirectional form (also send to the previous / receive from the next), posted as one
``batch_isend_irecv`` so compute can run until the returned handle is waited on."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .collectives import CommHandle, bound_for, launch
from .groups import group_info
from .ledger import record

# Tags separate the two directions (gloo matches by tag; NCCL matches per peer in posting order,
# which the fixed order below keeps identical on every rank, also when next == prev at N = 2).
from .tags import RING_BACKWARD as _TAG_BACKWARD
from .tags import RING_FORWARD as _TAG_FORWARD


def _as_list(x) -> list[torch.Tensor]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [x]
    return list(x)


def exchange(sends: Sequence[tuple[int, torch.Tensor, int]] = (),
             recvs: Sequence[tuple[int, torch.Tensor, int]] = (), *, group=None, step=None) -> CommHandle:
    """Post point-to-point sends and receives with arbitrary peers as one ``batch_isend_irecv``.

    ``sends``/``recvs`` are ``(group_rank, tensor, tag)``. Between one pair of ranks, sends and
    receives are matched in posting order (and by tag on gloo), so every rank must list the
    transfers of a pair in the same order. A transfer to this rank itself is a local copy (it must
    appear in both lists with the same tag, in the same order). ``handle.wait()`` returns the
    receive buffers (bounded by :func:`~odysseus_kernels.comm.timeout.comm_timeout` on CPU groups;
    ``step`` names this exchange in the timeout message, default: the count of calls of the op).
    """
    info = group_info(group)
    local_s = [(t, tag) for p, t, tag in sends if p == info.rank]
    local_r = [(t, tag) for p, t, tag in recvs if p == info.rank]
    if len(local_s) != len(local_r):
        raise ValueError("exchange: sends to self must match receives from self")
    for (s, _), (r, _) in zip(local_s, local_r):
        r.copy_(s)
    ops = []
    peers = []
    sent = received = 0
    for p, t, tag in sends:
        if p != info.rank:
            ops.append(dist.P2POp(dist.isend, t, info.global_rank(p), info.group, tag))
            peers.append(p)
            sent += t.numel() * t.element_size()
    for p, t, tag in recvs:
        if p != info.rank:
            ops.append(dist.P2POp(dist.irecv, t, info.global_rank(p), info.group, tag))
            peers.append(p)
            received += t.numel() * t.element_size()
    bufs = [t for _, t, _ in recvs]
    if not ops:
        return CommHandle.done(bufs)
    record("p2p", sent, received)
    dev = ops[0].tensor.device
    works = launch(dev, lambda: dist.batch_isend_irecv(ops))
    bound = bound_for(info, dev, "p2p exchange (send/receive)", peers=peers, step=step)
    return CommHandle(works, tuple(t for _, t, _ in sends) + tuple(bufs), bufs, bound)


def ring_exchange(send_next: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  recv_prev: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  send_prev: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  recv_next: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  *, group=None, step=None) -> CommHandle:
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
    # Forward transfers are listed before backward ones on every rank, so at N = 2 (next == prev)
    # the pairs still match in order.
    sends = [(info.next, t, _TAG_FORWARD) for t in fwd_s] + [(info.prev, t, _TAG_BACKWARD) for t in bwd_s]
    recvs = [(info.prev, t, _TAG_FORWARD) for t in fwd_r] + [(info.next, t, _TAG_BACKWARD) for t in bwd_r]
    h = exchange(sends, recvs, group=info, step=step)
    h.result = (recv_prev, recv_next)
    return h
