"""The GPU hot path on several GPUs (#18): NCCL ranks, one GPU each (needs >= 2 GPUs; skipped otherwise).

Per op, on 2 ranks (and 4 where the machine has them), after a warm-up call:
- forward and backward under ``torch.cuda.set_sync_debug_mode("error")`` with the DEFAULT ``"full"``
  validation: the cross-rank check runs on the CPU control group and must not synchronise the GPU;
- CUDA-graph capture of the forward (validation ``"local"``: the check's gloo collective is host work
  a graph cannot hold) and replay on fresh inputs equal to eager calls.

On one GPU these are tests/test_cuda_hotpath.py; on CPU, tests/test_host_sync.py shows on 2 and 3 gloo
ranks that no op's own code reads a tensor on the host. (gloo cannot stand in here: it has no
stream-ordered wait, so a gloo group on CUDA tensors blocks the host in every wait by construction.)
"""
from __future__ import annotations

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels.comm import LocalWorld

pytestmark = pytest.mark.cuda

B, C, H, HKV, D = 1, 128, 8, 4, 64


def _inputs(rank: int, hkv: int, seed: int = 0, grad: bool = True):
    g = torch.Generator(device="cuda").manual_seed(1000 * seed + rank)
    mk = lambda h: torch.randn(B, C, h, D, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    return [t.requires_grad_(grad) for t in (mk(H), mk(hkv), mk(hkv))]


def _ops(n: int) -> dict:
    kw = dict(causal=True, layout="zigzag")
    gamma = torch.full((H,), -0.05, device="cuda")  # one tensor: read on the host once ("full" validation)
    ops = {
        "ring_attention": (lambda q, k, v: ok.ring_attention(q, k, v, **kw), HKV),
        "token_ring_attention": (lambda q, k, v: ok.token_ring_attention(q, k, v, **kw), HKV),
        "ulysses_attention": (lambda q, k, v: ok.ulysses_attention(q, k, v, **kw), HKV),
        "allgather_kv_attention": (lambda q, k, v: ok.allgather_kv_attention(q, k, v, **kw), HKV),
        "lasp2_linear_attention": (lambda q, k, v: ok.lasp2_linear_attention(q, k, v, g_gamma=gamma), H),
    }
    if n % 2 == 0:  # Ulysses over pairs of ranks, ring across them: 2 x 1 on 2 GPUs (a ring of one), 2 x 2 on 4
        groups = ok.usp_groups(2)
        ops["usp_attention"] = (lambda q, k, v: ok.usp_attention(q, k, v, ulysses_group=groups.ulysses_group,
                                                                  ring_group=groups.ring_group, **kw), HKV)
    return ops


def _no_sync(name: str) -> bool:
    import torch.distributed as dist

    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    fn, hkv = _ops(dist.get_world_size())[name]
    q, k, v = _inputs(rank, hkv)
    fn(q, k, v).float().sum().backward()  # warm-up: compile, plan, NCCL communicators, control group
    torch.cuda.synchronize()
    q, k, v = _inputs(rank, hkv, seed=1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fn(q, k, v)  # default ("full") validation
        out.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return bool(torch.isfinite(out.float()).all()) and all(bool(torch.isfinite(t.grad.float()).all()) for t in (q, k, v))


def _graph(name: str) -> float:
    import torch.distributed as dist

    from tests.test_cuda_hotpath import capture_forward

    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    fn, hkv = _ops(dist.get_world_size())[name]
    static = _inputs(rank, hkv, grad=False)
    return max(capture_forward(fn, static, [_inputs(rank, hkv, seed=s, grad=False) for s in (2, 3)]))


def _worlds():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [w for w in (2, 4) if w <= n] or [2]


@pytest.fixture(scope="module")
def nccl_worlds():
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs >= 2 GPUs (NCCL, one GPU per rank)")
    worlds = {n: LocalWorld(n, backend="nccl") for n in _worlds()}
    yield worlds
    for w in worlds.values():
        w.shutdown()


NAMES = ["ring_attention", "token_ring_attention", "ulysses_attention", "allgather_kv_attention",
         "lasp2_linear_attention", "usp_attention"]


def _world_for(nccl_worlds, n, name):
    if n not in nccl_worlds:
        pytest.skip(f"needs {n} GPUs")
    return nccl_worlds[n]


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", NAMES)
def test_no_host_sync_on_nccl_ranks(nccl_worlds, n, name):
    assert all(_world_for(nccl_worlds, n, name).run(_no_sync, name, timeout=600))


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", NAMES)
def test_graph_capture_on_nccl_ranks(nccl_worlds, n, name):
    assert max(_world_for(nccl_worlds, n, name).run(_graph, name, timeout=600)) == 0.0
