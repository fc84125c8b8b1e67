"""Pieces shared by the strategy layers: gradient sync of replicated weights and ZeRO-3 weights."""
from __future__ import annotations

import torch
from torch import nn

from ..comm import all_gather, all_reduce, group_info, reduce_scatter


def sync_replicated_grads(params, group=None) -> None:
    """Sum the gradients of weights replicated across ``group`` (each rank saw its own tokens).

    Call after ``backward()``; one all-reduce per parameter (counted by the ledger as ``all_reduce``).
    """
    info = group_info(group)
    if info.size == 1:
        return
    for p in params:
        if p.grad is not None:
            all_reduce(p.grad, group=info)


class _GatherWeight(torch.autograd.Function):
    """Forward: all-gather the row shards of a weight; backward: reduce-scatter its gradient
    (the ZeRO-3 pattern: every rank uses the full weight, each keeps 1/N of it and of its grad)."""

    @staticmethod
    def forward(ctx, shard, info):
        ctx.info = info
        return all_gather(shard, group=info)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter(g.contiguous(), group=ctx.info), None


class ZeroShardedLinear(nn.Module):
    """A bias-free ``nn.Linear`` whose weight rows are sharded over ``group`` (ZeRO-3 / FSDP style):
    ``weight_shard`` is ``[out/N, in]``; the forward gathers the full weight for use and the backward
    reduce-scatters its gradient, so each rank keeps 1/N of weight, gradient and optimizer state.
    (PyTorch FSDP2 ``fully_shard`` does the same for a whole module; this small equivalent works on
    gloo/CPU and keeps the ledger exact.)"""

    def __init__(self, linear: nn.Linear, group=None):
        super().__init__()
        info = group_info(group)
        out_f = linear.weight.shape[0]
        if out_f % info.size:
            raise ValueError(f"ZeroShardedLinear: out_features ({out_f}) must be divisible by the group size "
                             f"({info.size})")
        if linear.bias is not None:
            raise ValueError("ZeroShardedLinear: bias is not supported")
        rows = out_f // info.size
        self.info = info
        self.weight_shard = nn.Parameter(linear.weight.detach()[info.rank * rows:(info.rank + 1) * rows].clone())

    def forward(self, x):
        return x @ _GatherWeight.apply(self.weight_shard, self.info).t()
