"""Process-group helpers: ``group=None`` means the default group (or a world of one when
torch.distributed is not initialised, so every op also runs in a single process)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class GroupInfo:
    """A process group with this rank's position in it.

    ``group`` is ``None`` only for the implicit world of one (torch.distributed not initialised).
    """

    group: object | None
    rank: int
    size: int

    @property
    def next(self) -> int:
        """Group rank this rank sends to in a ring."""
        return (self.rank + 1) % self.size

    @property
    def prev(self) -> int:
        """Group rank this rank receives from in a ring."""
        return (self.rank - 1) % self.size

    def global_rank(self, group_rank: int) -> int:
        """Global rank of ``group_rank`` (what torch.distributed's P2P calls want)."""
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    @property
    def backend(self) -> str:
        return backend_of(self.group)

    def describe(self) -> str:
        """Short text for messages: this rank's place in the group."""
        return f"group rank {self.rank} of {self.size}, backend {self.backend}"


_backends: dict = {}


def backend_of(group) -> str:
    """The backend name of ``group`` (``"none"`` for the implicit world of one), cached per group."""
    if group is None:
        return "none"
    b = _backends.get(group)
    if b is None:
        b = _backends[group] = str(dist.get_backend(group))
    return b


def group_info(group=None) -> GroupInfo:
    """Resolve ``group`` (``None`` = default group) to a :class:`GroupInfo`."""
    if isinstance(group, GroupInfo):
        return group
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("group was given but torch.distributed is not initialised")
        return GroupInfo(None, 0, 1)
    if group is None:
        group = dist.group.WORLD
    return GroupInfo(group, dist.get_rank(group), dist.get_world_size(group))


def new_group(ranks: list[int], backend: str | None = None):
    """Create a subgroup (a collective over the whole default group: every rank must call it)."""
    return dist.new_group(ranks, backend=backend)


def _handles_cpu(backend: str) -> bool:
    """Whether a group of this backend runs collectives on CPU tensors itself (gloo, or a mixed
    ``"cpu:gloo,cuda:nccl"`` group)."""
    b = backend.lower()
    if b in ("gloo", "mpi"):
        return True
    return any(part.strip().startswith("cpu:") for part in b.split(","))


_side_groups: dict = {}


def control_group(group=None):
    """The CPU process group that carries ``group``'s control traffic (the cross-rank check).

    For a gloo (or mixed cpu:gloo) group this is the group itself; for any other backend (NCCL) a
    gloo group over the same ranks, created on first use (only the group's members take part:
    ``use_local_synchronization=True``) and cached for the life of the group. Its tensors live on
    the CPU, so the check never touches a CUDA tensor nor waits on a CUDA stream. ``None`` for a
    world of one. To create it at a known point (e.g. right after ``new_group``), call this once on
    every member.
    """
    info = group_info(group)
    if info.group is None:
        return None
    if _handles_cpu(info.backend):
        return info.group
    side = _side_groups.get(info.group)
    if side is None:
        ranks = [info.global_rank(r) for r in range(info.size)]
        side = dist.new_group(ranks, backend="gloo", use_local_synchronization=True)
        _side_groups[info.group] = side
    return side


def control_device(info: GroupInfo) -> torch.device:
    """Device of the control tensors: always the CPU (see :func:`control_group`)."""
    return torch.device("cpu")


_forget_hooks: list = []


def on_forget(hook) -> None:
    """Register ``hook(group)``, called by :func:`forget_group` (caches above comm, e.g. USP's groups)."""
    _forget_hooks.append(hook)


def forget_group(group) -> None:
    """Drop every cache the package keeps for ``group`` (its backend name, its CPU control group,
    which is destroyed if it was created for it, and the caches registered with :func:`on_forget`,
    e.g. the USP groups built over it). Call it on every member before
    ``torch.distributed.destroy_process_group(group)`` (e.g. when recovering from a
    :class:`~odysseus_kernels.comm.CommTimeout`), so that no later call reuses a destroyed group."""
    _backends.pop(group, None)
    side = _side_groups.pop(group, None)
    if side is not None and side is not group and dist.is_initialized():
        try:
            dist.destroy_process_group(side)
        except (ValueError, RuntimeError):  # already destroyed
            pass
    for hook in list(_forget_hooks):
        hook(group)

