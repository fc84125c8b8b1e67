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
        if self.group is None:
            return "none"
        return str(dist.get_backend(self.group))


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


def control_device(info: GroupInfo) -> torch.device:
    """Device for small control tensors on ``info``'s backend (CUDA for NCCL, else CPU)."""
    if info.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
