"""The ring driver: the one loop behind every ring variant (ring / zigzag / TokenRing, forward and
backward). A variant is a *program* (a schedule plus what to compute); the driver only orders
communication and compute:

    for s in 0 .. S-1:
        post   program.prefetch(s + 1)       # the data step s+1 needs (inputs; overlaps compute s)
             + program.results(s - 1)        # what step s-1 produced for other ranks
        program.compute(s)
        wait;  program.absorb(s - 1)         # use the results of step s-1 that arrived here
    post program.results(S - 1); wait; program.absorb(S - 1)     # the final hop

Everything posted in one iteration goes out as one ``ring_exchange`` per distance (a
``batch_isend_irecv`` with both directions of the links), before the compute of the step, so on
CUDA the transfers run on comm's stream while the compute runs on the current one.

Buffers: a program receives step ``s`` data into :class:`Slots` buffers of parity ``s % 2``
(double buffering). The exchange that writes parity ``p`` again (posted in iteration ``s + 1``) is
posted after iteration ``s``'s handle was waited (so the send that read those buffers is
complete) and after ``compute(s - 1)`` was queued (``comm`` makes its stream wait for the current
stream before posting), so no buffer is overwritten while it is read. Results are sent from fresh
tensors, kept alive by the handle until it is waited.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ...comm import GroupInfo, ring_exchange


@dataclass
class Leg:
    """Tensors that go ``stride`` ranks away around the ring.

    Forward (``backward=False``): ``send[i]`` goes to rank ``r + stride`` and this rank's
    ``recv[i]`` is filled from rank ``r - stride``; backward: the other way round. Every rank
    posts the same legs (same number of tensors); sizes must match pairwise (sender/receiver), and
    may be zero.
    """

    stride: int
    send: list[torch.Tensor] = field(default_factory=list)
    recv: list[torch.Tensor] = field(default_factory=list)
    backward: bool = False


class RingProgram(Protocol):
    """What the driver runs (see the module docstring for the order of the calls)."""

    num_steps: int

    def prefetch(self, step: int) -> list[Leg]:
        """Legs that bring the data ``compute(step)`` needs (posted during ``compute(step - 1)``)."""

    def compute(self, step: int) -> None:
        """Compute the blocks of ``step``."""

    def results(self, step: int) -> list[Leg]:
        """Legs that carry what ``compute(step)`` produced for other ranks (posted after it)."""

    def absorb(self, step: int) -> None:
        """Use the results of ``step`` that arrived in the receive buffers of :meth:`results`."""


@dataclass(frozen=True)
class _StridedRing(GroupInfo):
    """The ring of ``group`` with a stride: "next" is rank + stride, "prev" is rank - stride, so
    ``comm.ring_exchange`` talks to the ranks ``stride`` away (TokenRing's direct sends to the
    query owner; on NVLink/NVSwitch every pair of GPUs has a direct link)."""

    stride: int = 1

    @property
    def next(self) -> int:
        return (self.rank + self.stride) % self.size

    @property
    def prev(self) -> int:
        return (self.rank - self.stride) % self.size


class _Handles:
    def __init__(self, handles):
        self.handles = handles

    def wait(self) -> None:
        for h in self.handles:
            h.wait()


def post(legs: list[Leg], info: GroupInfo) -> _Handles:
    """Post ``legs``: one ``ring_exchange`` per distinct stride (both directions in one call)."""
    by_stride: dict[int, tuple[list, list, list, list]] = {}
    for leg in legs:
        t = leg.stride % info.size
        if t == 0:
            raise ValueError(f"ring driver: a leg of stride {leg.stride} on a ring of {info.size} goes nowhere")
        if len(leg.send) != len(leg.recv):
            raise ValueError("ring driver: a leg needs as many receive buffers as sends")
        fs, fr, bs, br = by_stride.setdefault(t, ([], [], [], []))
        (bs if leg.backward else fs).extend(leg.send)
        (br if leg.backward else fr).extend(leg.recv)
    handles = []
    for t, (fs, fr, bs, br) in by_stride.items():
        if not (fs or bs):
            continue
        ring = info if t == 1 and type(info) is GroupInfo else _StridedRing(info.group, info.rank, info.size, t)
        handles.append(ring_exchange(fs, fr, bs, br, group=ring))
    return _Handles(handles)


def drive(program: RingProgram, info: GroupInfo) -> None:
    """Run ``program`` on the ring ``info`` (see the module docstring)."""
    n = program.num_steps
    for s in range(n):
        legs = (program.prefetch(s + 1) if s + 1 < n else []) + (program.results(s - 1) if s >= 1 else [])
        handle = post(legs, info)
        program.compute(s)
        handle.wait()
        if s >= 1:
            program.absorb(s - 1)
    if n >= 1:
        post(program.results(n - 1), info).wait()
        program.absorb(n - 1)


class Slots:
    """Double-buffered receive buffers: ``take(step, i, shape, dtype)`` returns a contiguous
    tensor backed by flat buffer ``i`` of parity ``step % 2`` (grown when a larger one is asked
    for), so the data of step ``s + 1`` never lands in the buffers step ``s`` is reading."""

    def __init__(self, device: torch.device):
        self.device = device
        self._flat: dict[tuple[int, int], torch.Tensor] = {}

    def take(self, step: int, index: int, shape, dtype: torch.dtype) -> torch.Tensor:
        key = (step % 2, index)
        numel = math.prod(shape)
        buf = self._flat.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = self._flat[key] = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel].view(tuple(shape))

    def like(self, step: int, index: int, t: torch.Tensor) -> torch.Tensor:
        return self.take(step, index, t.shape, t.dtype)
