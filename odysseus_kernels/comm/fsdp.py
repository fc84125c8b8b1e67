"""PyTorch FSDP2 (``fully_shard``) on one of our groups, for ZeRO-3 weights.

FSDP2 does its own communication, which the byte ledger does not see; the strategies default to
:class:`~odysseus_kernels.layers.ZeroShardedLinear` (the same ZeRO-3 pattern through ``comm/``, so
every byte is counted) and use this only when asked (``apply_odysseus(..., zero3="fsdp2")``).
Checked to work on gloo / CPU with torch 2.14.
"""
from __future__ import annotations

from .groups import group_info


def fsdp2_shard(module, group=None):
    """``fully_shard(module)`` over ``group`` with gradients *summed* (not averaged) over the group:
    in sequence parallelism every rank contributes its tokens' share of one batch's gradient."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    info = group_info(group)
    device = next(module.parameters()).device
    mesh = DeviceMesh.from_group(info.group, device.type)
    fully_shard(module, mesh=mesh)
    module.set_gradient_divide_factor(1.0)
    return module


def full_tensor(t):
    """The full tensor of an FSDP2 (DTensor) parameter or gradient (a collective), else ``t``."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
