"""Point-to-point ring exchange: send to the next rank / receive from the previous one, and the
bidirectional form (also send to the previous / receive from the next), posted as one
``batch_isend_irecv`` so compute can run until the returned handle is waited on.

CUDA tensors on a gloo group (several ranks sharing one GPU: a test set-up) travel through host
memory: gloo moves CUDA tensors in collectives but not point to point (its TCP transport aborts the
process on a device pointer: ``writev ... Bad address``, seen on an H200 with torch 2.11, 2026-12-04).
The sends are copied to the host when posted and the receives back to the device when waited on; a
gloo group blocks the host in every wait anyway."""
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


def _via_host(info, device: torch.device) -> bool:
    """Whether an exchange of tensors on ``device`` over the group of ``info`` is staged through host
    memory: CUDA (or other non-CPU) tensors on a group with no NCCL backend."""
    return device.type != "cpu" and "nccl" not in info.backend.lower()


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
    then = None
    if _via_host(info, dev):
        staged = [(op, torch.empty(op.tensor.shape, dtype=op.tensor.dtype)) for op in ops]
        for op, host in staged:
            if op.op is dist.isend:
                host.copy_(op.tensor)  # device to host: waits for the producer on the current stream
        ops = [dist.P2POp(op.op, host, op.peer, op.group, op.tag) for op, host in staged]
        back = [(op.tensor, host) for op, host in staged if op.op is dist.irecv]

        def then():
            for dst, host in back:
                dst.copy_(host)

        dev = torch.device("cpu")
    works = launch(dev, lambda: dist.batch_isend_irecv(ops))
    bound = bound_for(info, dev, "p2p exchange (send/receive)", peers=peers, step=step)
    keep = tuple(t for _, t, _ in sends) + tuple(bufs) + tuple(op.tensor for op in ops)
    return CommHandle(works, keep, bufs, bound, then=then)


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
