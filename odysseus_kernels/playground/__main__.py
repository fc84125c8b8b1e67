"""``python -m odysseus_kernels.playground`` (console script ``odysseus-playground``).

Trains the same small Llama-style model a few steps under every sequence-parallel strategy and
prints step time, memory, measured communication next to its closed form, and the error against
the single-device model. With no arguments on a machine without GPUs it spawns a local world of 4
gloo ranks on CPU; under ``torchrun`` it uses the launched world (NCCL on GPUs).
``odysseus-playground plan ...`` runs the cost-model planner instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys

import torch

from .runner import DEFAULT_MODEL, MODEL_FLAGS, STRATEGIES, RunConfig, blockwise_report, check_config, run_all


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="odysseus-playground", description=__doc__.split("\n\n")[1])
    p.add_argument("--world-size", type=int, default=4, help="local ranks to spawn when not under torchrun")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda under torchrun with GPUs, else cpu")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list of {', '.join(STRATEGIES)}")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    for flag, field in MODEL_FLAGS.items():  # the model's shape: defaults from DEFAULT_MODEL
        if flag != "mlp_chunk_size":
            help_ = "lasp2h: linear layers per softmax layer" if flag == "hybrid_ratio" else None
            p.add_argument("--" + flag.replace("_", "-"), type=int, default=None,
                           help=f"{help_ + ' ' if help_ else ''}(default {getattr(DEFAULT_MODEL, field)})")
    p.add_argument("--ulysses-degree", type=int, default=None, help="usp: Ulysses degree (default: picked)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--mlp-chunk-size", type=int, default=None,
                   help="blockwise (LWM/BPT) MLP over blocks of this many tokens")
    p.add_argument("--blockwise-report", action="store_true",
                   help="also measure activation memory with/without the blockwise MLP at two sequence lengths, "
                        "for every selected strategy where the MLP chunking matters (not tp_sp/odysseus)")
    p.add_argument("--out", default=None, help="directory for JSON/CSV results and PNG plots")
    return p


def _run_config(a) -> RunConfig:
    strategies = tuple(s.strip() for s in a.strategies.split(",") if s.strip())
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = a.device or ("cuda" if under_torchrun and torch.cuda.is_available() else "cpu")
    model = {f: getattr(a, f) for f in MODEL_FLAGS if getattr(a, f) is not None}
    return RunConfig(strategies=strategies, seq_len=a.seq_len, batch=a.batch, dtype=a.dtype, steps=a.steps,
                     device=device, ulysses_degree=a.ulysses_degree, **model)


def expected_comm(rc: RunConfig, world: int) -> tuple[dict, dict]:
    """Closed-form bytes received per rank per layer (fwd + bwd) from the cost model, and curves
    over sequence length for the plot. Empty when the cost model cannot express a strategy."""
    from .. import costmodel

    exp, curves = {}, {}
    for s in rc.strategies:
        fn = lambda L: costmodel.playground_comm_per_layer(s, rc, world, seq_len=L)  # noqa: E731
        exp[s] = fn(rc.seq_len)
        xs = [rc.seq_len * 2**i for i in range(0, 8)]
        curves[s] = (xs, [fn(x) for x in xs])
    return exp, curves


def _chunk(a, world: int) -> int:
    return a.mlp_chunk_size or max(1, a.seq_len // world // 4)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plan":
        from ..costmodel.__main__ import main as plan_main

        return plan_main(argv)
    a = _parser().parse_args(argv)
    rc = _run_config(a)
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    world = int(os.environ["WORLD_SIZE"]) if under_torchrun else a.world_size
    try:
        check_config(rc, world)
    except ValueError as e:
        print(f"odysseus-playground: {e}", file=sys.stderr)
        return 2
    if under_torchrun:
        import torch.distributed as dist  # the launcher's world; comm/ takes it from here

        backend = "nccl" if rc.device == "cuda" else "gloo"
        if rc.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        mine = run_all(rc, progress=True)
        from ..comm import all_gather_objects

        per_rank = all_gather_objects(mine)
        blockwise = (all_gather_objects(blockwise_report(rc, rc.strategies, _chunk(a, world)))
                     if a.blockwise_report else None)
        if dist.get_rank() != 0:
            dist.destroy_process_group()
            return 0
        dist.destroy_process_group()
    else:
        from ..comm import LocalWorld

        with LocalWorld(world, threads=max(1, (os.cpu_count() or 2) // world)) as w:
            per_rank = w.run(run_all, rc, True, timeout=1800)
            blockwise = (w.run(blockwise_report, rc, rc.strategies, _chunk(a, world), timeout=1800)
                         if a.blockwise_report else None)
    from .report import format_blockwise, format_table, plot_results, summarize, write_results

    try:
        expected, curves = expected_comm(rc, world)
    except (ImportError, AttributeError, NotImplementedError) as e:
        print(f"(closed-form communication unavailable: {e})", file=sys.stderr)
        expected, curves = {}, {}
    rows = summarize(per_rank, rc, expected)
    print(format_table(rows, rc, world, rc.device))
    if blockwise is not None:
        print(format_blockwise(blockwise[0], rc))
    if a.out:
        meta = {"world": world, "device": rc.device, "torch": torch.__version__, "python": platform.python_version(),
                "config": dataclasses.asdict(rc)}
        files = write_results(a.out, rows, meta) + plot_results(a.out, rows, curves, rc)
        print("wrote " + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
