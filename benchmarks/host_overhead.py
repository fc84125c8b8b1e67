"""Host overhead of the ring driver (issue #18 item 4): ring attention forward + backward at tiny shapes
(so compute is negligible and what is left is Python, autograd and the driver) against the bare
point-to-point exchanges it needs (the same number of batches with the same peers, tensor sizes and
tags, posted through ``odysseus_kernels.comm.exchange`` and waited one after the other), and the cost
of one cross-rank metadata check (``comm.rank_consistent``) against a bare 8-byte all-gather.

    python benchmarks/host_overhead.py [--quick] [--out DIR] [--device cpu|cuda|auto] [--world 2]

Ranks are spawned locally (gloo; on CUDA all ranks share the GPU, which needs gloo to move CUDA
tensors point-to-point: the run says so and records the error when it cannot). Rows: per-call and
per-ring-step medians (ms) and ``ratio`` = ring / bare exchanges (the driver's host overhead factor),
``ratio`` of the metadata check = check / bare all-gather. The four are timed in alternating rounds
(each a median of its calls, the slowest rank's), so that a change of machine load hits both sides of
a ratio alike; medians and ratios are the medians over the rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_run_args, bench, print_table, write_json  # noqa: E402


def _rank_main(cfg: dict) -> dict:
    """One rank: time ring fwd+bwd, the captured exchanges replayed bare, the metadata check."""
    import torch
    import torch.distributed as dist

    import odysseus_kernels as ok
    from odysseus_kernels import comm

    rank = dist.get_rank()
    if cfg["device"] == "cuda":
        dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator().manual_seed(1234 + rank)
    b, c, h, d = cfg["batch"], cfg["tokens"], cfg["heads"], cfg["head_dim"]
    q, k, v, do = (torch.randn(b, c, h, d, generator=g).to(dev, dtype) for _ in range(4))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def ring():
        out = ok.ring_attention(q, k, v, causal=True, layout="zigzag")
        out.backward(do)
        q.grad = k.grad = v.grad = None
        sync()

    # Capture the P2P batches one forward + backward posts (peer, shape, dtype, tag of every op).
    batches = []
    orig = dist.batch_isend_irecv

    def spy(ops):
        batches.append([(getattr(op.op, "__name__", str(op.op)), op.peer, tuple(op.tensor.shape), op.tensor.dtype,
                         op.tag) for op in ops])
        return orig(ops)

    dist.batch_isend_irecv = spy
    try:
        ring()
    finally:
        dist.batch_isend_irecv = orig
    replay = []
    nbytes = 0
    for ops in batches:
        sends = [(p, torch.zeros(s, dtype=t, device=dev), tag) for kind, p, s, t, tag in ops if kind == "isend"]
        recvs = [(p, torch.empty(s, dtype=t, device=dev), tag) for kind, p, s, t, tag in ops if kind == "irecv"]
        nbytes += sum(x.numel() * x.element_size() for _, x, _ in recvs)
        replay.append((sends, recvs))

    def bare():
        for sends, recvs in replay:
            comm.exchange(sends, recvs).wait()
        sync()

    mine = torch.zeros(1, dtype=torch.int64, device=dev)

    def check():
        with comm.rank_consistent("host_overhead", None) as chk:
            chk.meta(shape=q.shape, dtype=q.dtype, causal=True, layout="zigzag", window=(-1, -1))

    def gather8():
        comm.all_gather(mine)

    # Alternating rounds (ring, bare, check, all-gather; each a median of its calls), so that a change
    # of machine load hits both sides of a ratio alike; the ratios are per round, their median reported.
    iters, meta_iters, rounds = cfg["iters"], cfg["meta_iters"], cfg["rounds"]
    per = {"ring_ms": [], "bare_ms": [], "check_ms": [], "allgather8_ms": []}
    for _ in range(rounds):
        dist.barrier()
        per["ring_ms"].append(bench(ring, warmup=3, iters=iters))
        dist.barrier()
        per["bare_ms"].append(bench(bare, warmup=3, iters=iters))
        dist.barrier()
        per["check_ms"].append(bench(check, warmup=10, iters=meta_iters))
        dist.barrier()
        per["allgather8_ms"].append(bench(gather8, warmup=10, iters=meta_iters))
    return {"rank": rank, "rounds": per, "batches": len(batches), "ops": sum(len(o) for o in batches),
            "bytes_received": nbytes}


def measure(device: str, world: int, *, quick: bool, timeout: float = 600.0) -> dict:
    """Run the measurement on ``world`` local gloo ranks; the slowest rank's medians (ranks wait on each
    other, so the slowest is the step time)."""
    from odysseus_kernels.comm import LocalWorld

    cfg = {"device": device, "dtype": "float32" if device == "cpu" else "bfloat16", "batch": 1,
           "tokens": 64 if device == "cpu" else 256, "heads": 2, "head_dim": 32 if device == "cpu" else 64,
           "iters": 10 if quick else 20, "meta_iters": 30 if quick else 100, "rounds": 3 if quick else 7}
    with LocalWorld(world, threads=1) as w:
        per_rank = w.run(_rank_main, cfg, timeout=timeout)
    keys = ("ring_ms", "bare_ms", "check_ms", "allgather8_ms")
    # per round, the slowest rank (ranks wait on each other, so the slowest is the step time)
    rounds = [{k: max(r["rounds"][k][i] for r in per_rank) for k in keys} for i in range(cfg["rounds"])]
    med = {k: statistics.median(x[k] for x in rounds) for k in keys}
    ratio = statistics.median(x["ring_ms"] / x["bare_ms"] for x in rounds)
    check_ratio = statistics.median(x["check_ms"] / x["allgather8_ms"] for x in rounds)
    return {"cfg": cfg, "per_rank": per_rank, "rounds": rounds, **med, "ratio": ratio, "check_ratio": check_ratio,
            "ratios": [x["ring_ms"] / x["bare_ms"] for x in rounds], "batches": per_rank[0]["batches"],
            "ops": per_rank[0]["ops"], "bytes_received": per_rank[0]["bytes_received"]}


def rows_of(device: str, world: int, m: dict) -> list[dict]:
    steps = max(m["batches"], 1)
    shape = f"B{m['cfg']['batch']} C{m['cfg']['tokens']} H{m['cfg']['heads']} D{m['cfg']['head_dim']} {m['cfg']['dtype']}"
    return [
        {"device": device, "world": world, "what": "ring_attention fwd+bwd (causal zigzag)", "shape": shape,
         "steps": steps, "ms": m["ring_ms"], "ms_per_step": m["ring_ms"] / steps, "ratio": m["ratio"],
         "ratio_per_round": [round(x, 3) for x in m["ratios"]],
         "ms_per_round": [round(x["ring_ms"], 3) for x in m["rounds"]]},
        {"device": device, "world": world, "what": "bare P2P exchanges (same batches, sizes, peers)", "shape": shape,
         "steps": steps, "ms": m["bare_ms"], "ms_per_step": m["bare_ms"] / steps, "ratio": 1.0,
         "ms_per_round": [round(x["bare_ms"], 3) for x in m["rounds"]],
         "bytes_received": m["bytes_received"]},
        {"device": device, "world": world, "what": "rank_consistent metadata check (per call)", "shape": "-",
         "steps": 1, "ms": m["check_ms"], "ms_per_step": m["check_ms"], "ratio": m["check_ratio"]},
        {"device": device, "world": world, "what": "bare 8-byte all_gather (per call)", "shape": "-",
         "steps": 1, "ms": m["allgather8_ms"], "ms_per_step": m["allgather8_ms"], "ratio": 1.0},
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(p)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                   help="auto: CPU always, and CUDA too when a GPU is present")
    p.add_argument("--world", type=int, default=2, help="local ranks (default 2)")
    a = p.parse_args(argv)
    import torch

    devices = ["cpu", "cuda"] if a.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if a.device == "auto" else [a.device])
    rows, errors = [], {}
    for dev in devices:
        try:
            m = measure(dev, a.world, quick=a.quick)
        except Exception as e:  # noqa: BLE001  (gloo may not move CUDA tensors P2P: say so, keep the rest)
            errors[dev] = f"{type(e).__name__}: {str(e)[:2000]}"
            print(f"host_overhead: {dev} with {a.world} gloo ranks failed: {errors[dev][:500]}", file=sys.stderr)
            continue
        rows += rows_of(dev, a.world, m)
    if rows:
        print_table(rows, ["device", "world", "what", "shape", "steps", "ms", "ms_per_step", "ratio"])
        for dev in dict.fromkeys(r["device"] for r in rows):
            ring, _, check, _ = (r for r in rows if r["device"] == dev)
            print(f"{dev}: ring fwd+bwd host time {ring['ms_per_step']:.3f} ms per ring step, "
                  f"{ring['ratio']:.2f}x the bare exchanges; metadata check {check['ms'] * 1e3:.0f} us per call "
                  f"({check['ratio']:.2f}x a bare 8-byte all-gather); ratio per round: {ring['ratio_per_round']}")
    write_json(a.out, "host_overhead", rows, {"world": a.world, "errors": errors})
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
