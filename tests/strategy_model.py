"""The Llama-style model under one strategy's layers, as the playground trains it, for the host-sync tests
(tests/test_host_sync.py on gloo ranks, tests/test_cuda_hotpath.py on one GPU)."""
from __future__ import annotations

import torch

import odysseus_kernels as ok


def strategy_model(strategy: str, rc, *, device=None, dtype=None):
    """``(model, plan, loss)`` on this rank of the default group (a world of one without torch.distributed):
    the model of ``rc`` (a playground ``RunConfig``) with ``strategy``'s layers applied, and ``loss()``
    running its forward on this rank's shard of a fixed batch (the local token loss sum). USP at world 1
    takes both groups as the default group of one."""
    from odysseus_kernels import layers
    from odysseus_kernels.models.llama import LlamaModel, make_batch, token_loss_sum
    from odysseus_kernels.ops import local_positions, shard_sequence
    from odysseus_kernels.playground.runner import _apply, model_config

    n = ok.group_info().size
    cfg = model_config(rc, strategy)
    torch.manual_seed(0)
    model = LlamaModel(cfg).to(device=device, dtype=dtype)
    plan = (layers.apply_usp(model, ulysses_group=None, ring_group=None, layout="zigzag") if strategy == "usp" and n == 1
            else _apply(strategy, model, None, rc, n))
    ids, labels = make_batch(cfg, rc.batch, rc.seq_len, seed=0)
    ids, labels = (shard_sequence(t.to(device), group=plan.group, layout=plan.layout) for t in (ids, labels))
    pos = local_positions(ids.shape[1], rank=plan.group.rank, world_size=plan.group.size, layout=plan.layout,
                          device=device)
    return model, plan, lambda: token_loss_sum(model(ids, pos), labels)
