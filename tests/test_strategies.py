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


@pytest.mark.parametrize("world, heads, kv_heads", [pytest.param(2, 4, 2, id="N2-gqa"), pytest.param(3, 6, 3, id="N3-gqa"),
                                                   pytest.param(4, 4, 4, id="N4")])
def test_every_strategy_matches_single_device(world, heads, kv_heads):
    rc = RunConfig(seq_len=8 * world, hidden=6 * heads, heads=heads, kv_heads=kv_heads, intermediate=48, vocab=64,
                   layers=2, dtype="float64", steps=1, warmup=0)
    check_config(rc, world)
    per_rank = run_world(_run, world, rc, timeout=600)
    for rank, results in enumerate(per_rank):
        assert [r["strategy"] for r in results] == list(STRATEGIES)
        for r in results:
            assert r["loss_rel_err"] < TOL, (r["strategy"], rank, r["loss_rel_err"])
            assert r["grad_max_rel_err"] < TOL, (r["strategy"], rank, r["grad_max_rel_err"])


def _empty_inputs():
    """Every strategy's model on an empty batch and an empty sequence: empty logits, zero gradients."""
    import torch

    from odysseus_kernels import layers as L
    from odysseus_kernels import usp_groups
    from odysseus_kernels.models import LlamaConfig, LlamaModel

    out = {}
    for name in sorted(n for n in dir(L) if n.startswith("apply_")):
        kind = {"apply_lasp2": "all", "apply_lasp2h": "hybrid"}.get(name, "none")
        cfg = LlamaConfig(vocab_size=64, hidden=32, heads=4, kv_heads=2, intermediate=48, layers=2, linear_layers=kind,
                          hybrid_ratio=1)
        torch.manual_seed(0)
        model = LlamaModel(cfg).double()
        if name == "apply_usp":
            u = usp_groups(2)
            plan = L.apply_usp(model, ulysses_group=u.ulysses_group, ring_group=u.ring_group)
        else:
            plan = getattr(L, name)(model)
        for shape in ((0, 4), (1, 0)):
            model.zero_grad(set_to_none=True)
            logits = model(torch.zeros(shape, dtype=torch.long), torch.arange(shape[1]))
            logits.sum().backward()
            if hasattr(plan, "finish_backward"):
                plan.finish_backward()
            params = [p for p in model.parameters() if p.requires_grad]
            grads = [p.grad for p in params if p.grad is not None]
            out[(name, shape)] = (tuple(logits.shape), len(grads) == len(params) > 0
                                  and all(bool((g == 0).all()) for g in grads))
    return out


def test_every_strategy_takes_empty_inputs():
    for res in run_world(_empty_inputs, 2, timeout=300):
        assert len(res) == 2 * 10, sorted(res)
        for (name, shape), (logits, zero_grads) in res.items():
            assert logits == shape + (64,) and zero_grads, (name, shape, logits, zero_grads)


def test_impossible_configurations_name_the_strategy():
    rc = RunConfig(seq_len=20, heads=4, kv_heads=2)
    with pytest.raises(ValueError, match=r"zigzag: --seq-len 20 must be divisible by 16"):
        check_config(dataclasses.replace(rc, strategies=("zigzag",)), 8 // 1)
    with pytest.raises(ValueError, match=r"ulysses: --heads \(4\) and --kv-heads \(2\) must be divisible"):
        check_config(dataclasses.replace(rc, seq_len=32, strategies=("ulysses",)), 4)
    with pytest.raises(ValueError, match="unknown strategy 'megatron'"):
        check_config(dataclasses.replace(rc, strategies=("megatron",)), 2)


@pytest.mark.parametrize("world", [2, 4])
def test_playground_measured_communication_equals_the_closed_form(world):
    from odysseus_kernels.playground.__main__ import expected_comm
    from odysseus_kernels.playground.report import summarize

    rc = RunConfig(seq_len=32, hidden=32, heads=4, kv_heads=world, intermediate=48, vocab=64, layers=2, steps=1, warmup=0)
    per_rank = run_world(_run, world, rc, timeout=600)
    expected, curves = expected_comm(rc, world)
    rows = summarize(per_rank, rc, expected)
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    for r in rows:
        assert r["comm_per_layer_bytes"] == r["comm_per_layer_expected_bytes"] > 0, r["strategy"]
        assert r["grad_max_rel_err"] < 1e-4 and r["loss_rel_err"] < 1e-5, r["strategy"]
    assert all(len(xs) == len(ys) > 1 for xs, ys in curves.values())


def test_playground_cli_end_to_end(tmp_path):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "odysseus_kernels.playground", "--world-size", "2", "--seq-len", "16",
                          "--steps", "1", "--strategies", "zigzag,tp_sp,lasp2", "--blockwise-report",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "odysseus playground: world 2" in out.stdout and "blockwise MLP" in out.stdout
    res = json.loads((tmp_path / "playground.json").read_text())
    assert [r["strategy"] for r in res["results"]] == ["zigzag", "tp_sp", "lasp2"]
    assert (tmp_path / "playground.csv").exists()
    assert (tmp_path / "comm_vs_seq_len.png").stat().st_size > 0 and (tmp_path / "time_memory.png").exists()
    bad = subprocess.run([sys.executable, "-m", "odysseus_kernels.playground", "--world-size", "4", "--seq-len", "20",
                          "--strategies", "zigzag"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "zigzag: --seq-len 20 must be divisible by 8" in bad.stderr


def _odysseus_fsdp2():
    import torch

    from odysseus_kernels import layers as L
    from odysseus_kernels.models import LlamaConfig, LlamaModel, make_batch, token_loss_sum
    from odysseus_kernels.ops import local_positions, shard_sequence

    n = comm_info().size
    cfg = LlamaConfig(vocab_size=64, hidden=32, heads=4, kv_heads=4, intermediate=48, layers=2)
    ref = LlamaModel(cfg).double()
    ids, labels = make_batch(cfg, 1, 8 * n, seed=3)
    (token_loss_sum(ref(ids, torch.arange(8 * n)), labels) / labels.numel()).backward()
    model = LlamaModel(cfg).double()
    plan = L.apply_odysseus(model, zero3="fsdp2")
    il, ll = shard_sequence(ids), shard_sequence(labels)
    pos = local_positions(il.shape[1], rank=plan.group.rank, world_size=n, layout="contiguous")
    (token_loss_sum(model(il, pos), ll) / labels.numel()).backward()
    plan.finish_backward()
    grads = L.full_grads(model, plan)
    return max(((grads[k] - p.grad).abs().max() / p.grad.abs().max()).item() for k, p in ref.named_parameters())


def comm_info():
    from odysseus_kernels import comm

    return comm.group_info()


def test_odysseus_with_fsdp2_zero3_matches_single_device():
    assert all(e < 1e-10 for e in run_world(_odysseus_fsdp2, 2, timeout=300))
