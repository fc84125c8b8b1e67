"""AllGather-GEMM / GEMM-ReduceScatter: what decomposing the GEMM costs, and what overlapping buys.

One GPU (all a lent machine has; the ops' own communication needs several):

    python benchmarks/tp_gemm.py --out benchmarks/results/tp_gemm-<date>-<gpu>

1. ``decomposition``: the ring's compute alone at N = 2, 4, 8, against one GEMM of the same total
   size (the baseline; ``overhead_%`` is the ratio minus one, target <= 5%):
   ``ag``: N GEMMs each writing its rows of the output in place (``ok.ops.tp_gemm.pipeline.gemm``,
   exactly what the ring runs); ``ag+streams``: the same plus each step's stream hand-offs (comm
   stream waits for compute, compute waits for comm) and a device copy of the next shard on the
   high-priority comm stream, a local stand-in for the P2P receive that also competes for SMs;
   ``rs``: the GEMM-RS ring's step (GEMM into fp32, add the incoming accumulator, cast to ship).
2. ``threshold``: per-step rows swept at two (K, N) shapes with N = 4 steps; the smallest per-step
   GEMM (FLOPs) whose ``ag+streams`` decomposition stays within 5% is printed next to
   ``MIN_OVERLAP_FLOPS`` (the constant the auto mode uses: update it from this).
3. ``world1``: the ops in a world of one (validation and bookkeeping, no communication) against
   ``torch.matmul`` / autograd, forward and forward+backward.

Several GPUs (the overlap itself; NCCL):

    torchrun --nproc-per-node 8 benchmarks/tp_gemm.py --out benchmarks/results/tp_gemm-8gpu
    torchrun --nproc-per-node 8 benchmarks/tp_gemm.py --sweep    # per-rank tokens 256 .. 16384

Per rank ``[1, S_local, d]`` into a ``[3d/N, d]`` column shard (QKV-like AG-GEMM) and ``[1, N*S_local,
d/N]`` into a ``[d, d/N]`` row shard (O-proj-like GEMM-RS): ``plain`` (one collective, one GEMM),
``ring``, ``chunks=2``, ``chunks=4``, forward and forward+backward, with the speed-up over plain.
With ``--sweep`` the per-step size where the ring starts to beat plain is the measured threshold.
Every rank calls each op the same fixed number of times (``bench(..., iters=)``); rank 0 reports.
Prints tables and writes JSON (device, versions, commit) and CSV into ``--out``.

Without a GPU both commands run at toy sizes on CPU (gloo under torchrun): a check that the script
works, not a measurement.
"""
from __future__ import annotations

import argparse
import functools
import os

import torch
from _common import bench, print_table, write_results

TARGET = 5.0  # % overhead of the decomposition that still counts as free


def _fwd_bwd(fwd, dy):
    return lambda: fwd().backward(dy)


def _decomposed(m, k, n_out, steps, dtype, variant, device="cuda"):
    """A closure running one ring pass's compute (``variant``) on an ``[m, k] x [k, n_out]`` problem."""
    from odysseus_kernels.ops.tp_gemm.pipeline import gemm

    x = torch.randn(steps, 1, m // steps, k, device=device, dtype=dtype)
    wt = torch.randn(n_out, k, device=device, dtype=dtype).t()
    out = torch.empty(1, steps, m // steps, n_out, device=device, dtype=dtype)
    cs = torch.cuda.Stream(priority=torch.cuda.Stream.priority_range()[1]) if device == "cuda" else None
    scratch = torch.empty_like(x[0])
    incoming = torch.randn(1, m // steps, n_out, device=device, dtype=dtype)

    def ag():
        for s in range(steps):
            gemm(x[s], wt, out=out[:, s])

    def ag_streams():
        cur = torch.cuda.current_stream()
        for s in range(steps):
            cs.wait_stream(cur)
            with torch.cuda.stream(cs):
                if s + 1 < steps:
                    scratch.copy_(x[s + 1])  # stands in for receiving the next shard
            gemm(x[s], wt, out=out[:, s])
            cur.wait_stream(cs)

    def rs():
        for s in range(steps):
            part = gemm(x[s], wt, out_dtype=torch.float32)
            part.add_(incoming)
            part.to(dtype)

    return {"ag": ag, "ag+streams": ag_streams, "rs": rs}[variant]


def decomposition(dtype, shapes, device="cuda") -> list[dict]:
    rows = []
    for m, k, n_out in shapes:
        x = torch.randn(m, k, device=device, dtype=dtype)
        wt = torch.randn(n_out, k, device=device, dtype=dtype).t()
        one = bench(functools.partial(torch.matmul, x, wt))
        for steps in (2, 4, 8):
            for variant in ("ag", "ag+streams", "rs") if device == "cuda" else ("ag", "rs"):
                t = bench(_decomposed(m, k, n_out, steps, dtype, variant, device))
                rows.append({"M": m, "K": k, "N": n_out, "steps": steps, "variant": variant, "one_gemm_ms": one,
                             "decomposed_ms": t, "overhead_%": 100 * (t / one - 1),
                             "one_gemm_tflops": 2 * m * k * n_out / one / 1e9})
    return rows


def threshold(dtype, steps=4) -> tuple[list[dict], dict]:
    from odysseus_kernels.ops.tp_gemm.pipeline import MIN_OVERLAP_FLOPS

    rows, found = [], {}
    for k, n_out in ((4096, 4096), (8192, 1024)):
        for r in (128, 256, 512, 1024, 2048, 4096, 8192, 16384):
            m = r * steps
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            wt = torch.randn(n_out, k, device="cuda", dtype=dtype).t()
            one = bench(functools.partial(torch.matmul, x, wt))
            t = bench(_decomposed(m, k, n_out, steps, dtype, "ag+streams"))
            flops = 2 * r * k * n_out
            rows.append({"rows_per_step": r, "K": k, "N": n_out, "step_gflop": flops / 1e9, "one_gemm_ms": one,
                         "decomposed_ms": t, "overhead_%": 100 * (t / one - 1)})
            if 100 * (t / one - 1) <= TARGET and (k, n_out) not in found:
                found[(k, n_out)] = flops
    summary = {"target_overhead_%": TARGET, "MIN_OVERLAP_FLOPS": MIN_OVERLAP_FLOPS,
               "measured_min_step_flops": {f"K{k}-N{n}": v for (k, n), v in found.items()}}
    return rows, summary


def world_of_one(dtype, shapes, device="cuda") -> list[dict]:
    import odysseus_kernels as ok

    rows = []
    for m, k, n_out in shapes:
        x = torch.randn(1, m, k, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(n_out, k, device=device, dtype=dtype, requires_grad=True)
        dy = torch.randn(1, m, n_out, device=device, dtype=dtype)
        for name, op in (("all_gather_matmul", ok.all_gather_matmul), ("matmul_reduce_scatter", ok.matmul_reduce_scatter)):
            base_f, ours_f = functools.partial(torch.matmul, x, w.t()), functools.partial(op, x, w)
            with torch.no_grad():
                base, ours = bench(base_f), bench(ours_f)
            base_b, ours_b = bench(_fwd_bwd(base_f, dy)), bench(_fwd_bwd(ours_f, dy))
            rows.append({"op": name, "M": m, "K": k, "N": n_out, "matmul_ms": base, "op_ms": ours,
                         "ratio": ours / base, "matmul_fwd_bwd_ms": base_b, "op_fwd_bwd_ms": ours_b,
                         "ratio_fwd_bwd": ours_b / base_b})
    return rows


def distributed(dtype, hidden, tokens, device="cuda") -> list[dict]:
    import torch.distributed as dist

    import odysseus_kernels as ok

    n = dist.get_world_size()
    rows = []
    modes = {"plain": {"overlap": False}, "ring": {"overlap": True}, "chunks2": {"chunks": 2}, "chunks4": {"chunks": 4}}
    for s_local in tokens:
        x = torch.randn(1, s_local, hidden, device=device, dtype=dtype, requires_grad=True)
        w_ag = torch.randn(3 * hidden // n, hidden, device=device, dtype=dtype, requires_grad=True)
        h = torch.randn(1, n * s_local, hidden // n, device=device, dtype=dtype, requires_grad=True)
        w_rs = torch.randn(hidden, hidden // n, device=device, dtype=dtype, requires_grad=True)
        dy_ag = torch.randn(1, n * s_local, 3 * hidden // n, device=device, dtype=dtype)
        dy_rs = torch.randn(1, s_local, hidden, device=device, dtype=dtype)
        ops = {"all_gather_matmul": (functools.partial(ok.all_gather_matmul, x, w_ag), dy_ag, 3 * hidden // n),
               "matmul_reduce_scatter": (functools.partial(ok.matmul_reduce_scatter, h, w_rs), dy_rs, hidden)}
        for name, (op, dy, n_out) in ops.items():
            times = {}
            for mode, kw in modes.items():
                fwd = functools.partial(op, **kw)
                dist.barrier()
                with torch.no_grad():
                    times[mode] = bench(fwd, warmup=5, iters=20)
                dist.barrier()
                times[mode + "_bwd"] = bench(_fwd_bwd(fwd, dy), warmup=3, iters=10)
            k_local = hidden if name == "all_gather_matmul" else hidden // n
            step_flops = 2 * s_local * k_local * n_out
            for mode in modes:
                rows.append({"op": name, "world": n, "S_local": s_local, "hidden": hidden, "mode": mode,
                             "step_gflop": step_flops / 1e9, "fwd_ms": times[mode],
                             "fwd_speedup": times["plain"] / times[mode], "fwd_bwd_ms": times[mode + "_bwd"],
                             "fwd_bwd_speedup": times["plain_bwd"] / times[mode + "_bwd"]})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=None, help="directory for JSON + CSV results")
    p.add_argument("--hidden", type=int, default=8192, help="model width for the multi-GPU run")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per rank for the multi-GPU run")
    p.add_argument("--sweep", action="store_true", help="multi-GPU: sweep tokens per rank 256 .. 16384")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    # Without a GPU the script still runs end to end on CPU (gloo under torchrun) at toy sizes: a
    # check of the script itself, its numbers say nothing about GPUs.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print("no CUDA GPU: toy-sized CPU run (checks the script; the timings mean nothing)")
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        hidden = a.hidden if device == "cuda" else 64
        tokens = [256 * 2 ** i for i in range(7)] if a.sweep else [a.tokens]
        rows = distributed(dtype, hidden, tokens if device == "cuda" else [16, 32], device)
        if dist.get_rank() == 0:
            print_table(rows)
            write_results(a.out, f"tp_gemm_world{dist.get_world_size()}", rows, {"dtype": a.dtype})
        dist.destroy_process_group()
        return
    if device == "cpu":
        rows = decomposition(dtype, [(256, 128, 128)], device)
        print_table(rows)
        wrows = world_of_one(dtype, [(64, 64, 64)], device)
        print_table(wrows)
        return
    rows = decomposition(dtype, [(8192, 8192, 8192), (16384, 4096, 14336 // 8), (32768, 8192, 3 * 8192 // 8)])
    print_table(rows)
    trows, summary = threshold(dtype)
    print_table(trows)
    print("threshold:", summary)
    wrows = world_of_one(dtype, [(256, 256, 256), (8192, 4096, 4096)])
    print_table(wrows)
    write_results(a.out, "tp_gemm_decomposition", rows, {"dtype": a.dtype, "target_overhead_%": TARGET})
    write_results(a.out, "tp_gemm_threshold", trows, {"dtype": a.dtype, **summary})
    write_results(a.out, "tp_gemm_world1", wrows, {"dtype": a.dtype})

if __name__ == "__main__":
    main()
