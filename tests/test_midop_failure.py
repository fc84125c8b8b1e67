"""A rank that fails in the middle of an op ends every other rank's wait within the bound, for every op.

On 3 gloo ranks, rank 1 either skips an op's forward (validation ``"local"``, so the others get past
the cross-rank check and block in the op's own communication) or runs the forward and skips the
backward. Ranks 0 and 2 must raise :class:`~odysseus_kernels.CommTimeout` within the bound (a rank
whose partner timed out first may wait one more bound), never hang. Each case runs on a fresh group
(a timed-out group is out of step and is discarded).
"""
from __future__ import annotations

import pytest
import torch

import odysseus_kernels as ok

from .distributed import run_world

BOUND = 2.0
N = 3


def _cases(g, usp):
    """op name -> (inputs, call): ``call(*inputs)`` returns a tensor that depends on every input."""
    gen = torch.Generator().manual_seed(7)

    def t(*shape, dtype=torch.float64):
        return torch.randn(*shape, generator=gen, dtype=dtype, requires_grad=True)

    qkv = lambda h=3, kv=3: (t(1, 4, h, 4), t(1, 4, kv, 4), t(1, 4, kv, 4))  # noqa: E731
    cases = {
        "ring_attention": (qkv(3, 1), lambda q, k, v: ok.ring_attention(q, k, v, group=g, causal=True, layout="zigzag")),
        "token_ring_attention": (qkv(), lambda q, k, v: ok.token_ring_attention(q, k, v, group=g, causal=True)),
        "allgather_kv_attention": (qkv(), lambda q, k, v: ok.allgather_kv_attention(q, k, v, group=g)),
        "ulysses_attention": (qkv(), lambda q, k, v: ok.ulysses_attention(q, k, v, group=g, causal=True)),
        "usp_attention": (qkv(), lambda q, k, v: ok.usp_attention(q, k, v, ulysses_group=usp.ulysses_group,
                                                                  ring_group=usp.ring_group, causal=True)),
        "ring_self_attention": (qkv(), lambda q, k, v: ok.ring_self_attention(q, k, v, group=g, causal=True)),
        "lasp2_linear_attention": (qkv(), lambda q, k, v: ok.lasp2_linear_attention(q, k, v, group=g)),
        "gather_sequence": ((t(1, 4, 3),), lambda x: ok.gather_sequence(x, group=g)),
    }
    f32 = torch.float32  # the fused GEMM's dtypes
    for impl in ("plain", "chunked", "ring", "fused"):
        cases[f"all_gather_linear/{impl}"] = (
            (t(1, 4, 5, dtype=f32), t(6, 5, dtype=f32), t(6, dtype=f32)),
            lambda x, w, b, impl=impl: ok.all_gather_linear(x, w, b, group=g, impl=impl))
        cases[f"linear_reduce_scatter/{impl}"] = (
            (t(1, 12, 5, dtype=f32), t(6, 5, dtype=f32), t(6, dtype=f32)),
            lambda x, w, b, impl=impl: ok.linear_reduce_scatter(x, w, b, group=g, impl=impl))
    return cases


def _run(phase: str, names: list):
    import time

    import torch.distributed as dist

    r = ok.group_info().rank
    out = {}
    for name in names:
        g = dist.new_group(list(range(N)))  # every rank, every case: also keeps the ranks in step
        usp = ok.usp_groups(N, g) if name == "usp_attention" else None
        inputs, call = _cases(g, usp)[name]
        t0 = time.monotonic()
        try:
            with ok.comm_timeout(BOUND), ok.validation("local"):
                if phase == "forward" and r == 1:
                    raise RuntimeError("skipped the forward")
                y = call(*inputs)
                if phase == "backward" and r == 1:
                    raise RuntimeError("skipped the backward")
                y.sum().backward()
            out[name] = ("ok", "", time.monotonic() - t0)
        except TimeoutError as e:
            out[name] = (type(e).__name__, str(e), time.monotonic() - t0)
        except RuntimeError as e:
            out[name] = ("RuntimeError", str(e), time.monotonic() - t0)
    return out


NAMES = list(_cases(None, None))


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_every_op_ends_every_wait_within_the_bound(phase):
    # the fused GEMMs run in the Triton interpreter on CPU
    res = run_world(_run, N, phase, NAMES, timeout=60 + len(NAMES) * 4 * BOUND)
    bad = []
    for name in NAMES:
        kind, msg, _ = res[1][name]
        if kind != "RuntimeError" or "skipped" not in msg:
            bad.append((name, 1, kind, msg[:200]))
        for r in (0, 2):
            kind, msg, elapsed = res[r][name]
            if kind != "CommTimeout" or elapsed > 2 * BOUND + 3.0 or f"timed out after {BOUND:.1f} s" not in msg:
                bad.append((name, r, kind, round(elapsed, 1), msg[:200]))
    assert not bad, bad
