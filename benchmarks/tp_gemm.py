"""AllGather-GEMM / GEMM-ReduceScatter: the fused persistent GEMM against cuBLAS, the overlap it buys
against a simulated producer, and (under torchrun) the fused ops against the decomposed schedules,
NCCL + cuBLAS and PyTorch's symmetric-memory fused ops.

One GPU:

    python benchmarks/tp_gemm.py [--quick] --out benchmarks/results/tp_gemm-<date>-<gpu>

1. ``gemm``: ``persistent_gemm`` alone (no flags, grid = all SMs) vs ``torch.matmul`` (cuBLAS) at
   M=N=K=8192 and the Llama-3-8B / 70B tensor-parallel (TP=8) GEMM shapes, bf16. ``ratio`` =
   cuBLAS ms / ours (target >= 0.9).
2. ``simulated_ag``: the fused AG-GEMM with a producer stream standing in for the ring: the pieces of
   the gathered input are copied (device to device) one by one on a second stream, each followed by
   its flag, while the persistent GEMM (grid capped at SMs - margin) waits per tile; baseline: the
   same copies, then one cuBLAS GEMM. ``hidden_%``: how much of the copy time the fused run hides,
   ``100 * (baseline - fused) / copy``.

Several GPUs (NCCL):

    torchrun --nproc-per-node 8 benchmarks/tp_gemm.py [--quick] --out benchmarks/results/tp_gemm-8gpu

3. ``distributed``: per rank ``[1, S_local, d]`` into a QKV-like column shard (AG-GEMM) and ``[1, N*S_local,
   d/N]`` into an O-like row shard (GEMM-RS): ``impl="fused"`` vs ``"ring"`` (decomposed) vs
   ``"chunked"`` vs ``"plain"`` (NCCL + cuBLAS, the baseline) vs ``torch.ops.symm_mem.fused_all_gather_matmul``
   / ``fused_matmul_reduce_scatter`` when this torch has them (forward only). Target: fused faster than
   plain and not slower than symm_mem. Every rank calls each op the same number of times.

Without CUDA it prints "skipped: no CUDA" and exits 0.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import torch
from _common import add_run_args, bench, print_table, write_results

# (name, M, N, K) of y[M, N] = x[M, K] @ w[N, K]^T; TP = 8, 8192 tokens per GEMM
LLAMA_SHAPES = [
    ("square-8192", 8192, 8192, 8192),
    ("pytorch-asynctp", 2048, 3584, 8192),
    ("llama3-8b-qkv", 8192, (4096 + 2 * 1024) // 8, 4096),
    ("llama3-8b-o", 8192, 4096, 4096 // 8),
    ("llama3-8b-gate_up", 8192, 2 * 14336 // 8, 4096),
    ("llama3-8b-down", 8192, 4096, 14336 // 8),
    ("llama3-70b-qkv", 8192, (8192 + 2 * 1024) // 8, 8192),
    ("llama3-70b-o", 8192, 8192, 8192 // 8),
    ("llama3-70b-gate_up", 8192, 2 * 28672 // 8, 8192),
    ("llama3-70b-down", 8192, 8192, 28672 // 8),
]
QUICK = {"square-8192", "llama3-8b-gate_up", "llama3-70b-down"}


def gemm_alone(dtype, quick: bool) -> list[dict]:
    from odysseus_kernels.kernels.gemm import persistent_gemm

    rows = []
    for name, m, n, k in LLAMA_SHAPES:
        if quick and name not in QUICK:
            continue
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        w = torch.randn(n, k, device="cuda", dtype=dtype)
        out = torch.empty(m, n, device="cuda", dtype=dtype)
        base = bench(lambda: torch.matmul(x, w.t(), out=out))
        ours = bench(lambda: persistent_gemm(x, w, out=out))
        rows.append({"shape": name, "M": m, "N": n, "K": k, "cublas_ms": base, "fused_gemm_ms": ours,
                     "ratio": base / ours, "fused_tflops": 2 * m * n * k / ours / 1e9})
    return rows


def simulated_ag(dtype, quick: bool, pieces: int = 8) -> list[dict]:
    from odysseus_kernels.kernels.gemm import RowMap, Wait, persistent_gemm
    from odysseus_kernels.ops.tp_gemm.fused import SM_MARGIN, _signal, flags_for

    rows = []
    for name, m, n, k in LLAMA_SHAPES:
        if quick and name not in QUICK:
            continue
        rpp = m // pieces
        m = rpp * pieces
        src = torch.randn(m, k, device="cuda", dtype=dtype)
        gathered = torch.empty_like(src)
        w = torch.randn(n, k, device="cuda", dtype=dtype)
        out = torch.empty(m, n, device="cuda", dtype=dtype)
        v = torch.arange(m, device="cuda")
        rowmap = RowMap(v.int(), v.int(), (v // rpp).int(), pieces)
        st = flags_for(torch.device("cuda"))
        prod = torch.cuda.Stream(priority=torch.cuda.Stream.priority_range()[1])

        def copies(flag_epoch=None):
            cur = torch.cuda.current_stream()
            prod.wait_stream(cur)
            with torch.cuda.stream(prod):
                for j in range(1, pieces):
                    gathered[j * rpp:(j + 1) * rpp].copy_(src[j * rpp:(j + 1) * rpp])
                    if flag_epoch is not None:
                        _signal(st.ag[j:j + 1], flag_epoch)

        def copy_only():
            copies()
            torch.cuda.current_stream().wait_stream(prod)

        def copy_then_gemm():
            copies()
            torch.cuda.current_stream().wait_stream(prod)
            torch.matmul(gathered, w.t(), out=out)

        def fused():
            e = st.next_epoch(pieces)
            copies(e)
            persistent_gemm(gathered, w, out=out, rows=rowmap, wait=Wait(st.ag, e), margin=SM_MARGIN)
            torch.cuda.current_stream().wait_stream(prod)

        t_copy, t_gemm = bench(copy_only), bench(lambda: torch.matmul(src, w.t(), out=out))
        t_base, t_fused = bench(copy_then_gemm), bench(fused)
        rows.append({"shape": name, "M": m, "N": n, "K": k, "pieces": pieces, "copy_ms": t_copy, "cublas_ms": t_gemm,
                     "copy_then_gemm_ms": t_base, "fused_ms": t_fused, "ratio": t_base / t_fused,
                     "hidden_%": 100 * (t_base - t_fused) / t_copy})
    return rows


def _symm_mem_ops(group):
    """``(ag, rs)`` closures over ``torch.ops.symm_mem``'s fused ops, or ``None`` if unavailable."""
    try:
        from torch.distributed import _symmetric_memory as symm

        ops = torch.ops.symm_mem
        ops.fused_all_gather_matmul, ops.fused_matmul_reduce_scatter  # noqa: B018
        name = group.group_name
        symm.enable_symm_mem_for_group(name)
    except Exception as e:  # noqa: BLE001 - any failure means "not available here"
        print(f"symm_mem fused ops unavailable: {type(e).__name__}: {e}")
        return None
    ag = lambda x, w: ops.fused_all_gather_matmul(x, [w.t()], 0, name)[1][0]
    rs = lambda h, w: ops.fused_matmul_reduce_scatter(h, w.t(), "sum", 0, name)
    return ag, rs


def distributed(dtype, hidden: int, tokens: list[int]) -> list[dict]:
    import torch.distributed as dist

    import odysseus_kernels as ok

    n, rows = dist.get_world_size(), []
    symm = _symm_mem_ops(dist.group.WORLD)
    impls = {"plain": {"impl": "plain"}, "ring": {"impl": "ring"}, "chunked4": {"impl": "chunked", "chunks": 4},
             "fused": {"impl": "fused"}}
    for s_local in tokens:
        x = torch.randn(1, s_local, hidden, device="cuda", dtype=dtype, requires_grad=True)
        w_ag = torch.randn(3 * hidden // n, hidden, device="cuda", dtype=dtype, requires_grad=True)
        h = torch.randn(1, n * s_local, hidden // n, device="cuda", dtype=dtype, requires_grad=True)
        w_rs = torch.randn(hidden, hidden // n, device="cuda", dtype=dtype, requires_grad=True)
        dy = {"all_gather_linear": torch.randn(1, n * s_local, 3 * hidden // n, device="cuda", dtype=dtype),
              "linear_reduce_scatter": torch.randn(1, s_local, hidden, device="cuda", dtype=dtype)}
        ops = {"all_gather_linear": functools.partial(ok.all_gather_linear, x, w_ag),
               "linear_reduce_scatter": functools.partial(ok.linear_reduce_scatter, h, w_rs)}
        for name, op in ops.items():
            times = {}
            for impl, kw in impls.items():
                fwd = functools.partial(op, **kw)
                dist.barrier()
                with torch.no_grad():
                    times[impl] = bench(fwd, warmup=5, iters=20)
                dist.barrier()
                times[impl + "_bwd"] = bench(lambda: fwd().backward(dy[name]), warmup=3, iters=10)
            if symm is not None:
                try:
                    with torch.no_grad():
                        f = (lambda: symm[0](x[0], w_ag)) if name == "all_gather_linear" else \
                            (lambda: symm[1](h[0], w_rs))
                        dist.barrier()
                        times["symm_mem"] = bench(f, warmup=5, iters=20)
                except Exception as e:  # noqa: BLE001
                    print(f"symm_mem {name} failed: {type(e).__name__}: {e}")
            for impl in list(impls) + (["symm_mem"] if "symm_mem" in times else []):
                rows.append({"op": name, "world": n, "S_local": s_local, "hidden": hidden, "impl": impl,
                             "fwd_ms": times[impl], "fwd_ratio_vs_plain": times["plain"] / times[impl],
                             "fwd_bwd_ms": times.get(impl + "_bwd"),
                             "fwd_bwd_ratio_vs_plain": (times["plain_bwd"] / times[impl + "_bwd"]
                                                        if impl + "_bwd" in times else None)})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(p)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--hidden", type=int, default=8192, help="model width for the multi-GPU run")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per rank for the multi-GPU run")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("tp_gemm: skipped: no CUDA")
        return 0
    dtype = getattr(torch, a.dtype)
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
        tokens = [a.tokens] if a.quick else [1024, 4096, 16384]
        rows = distributed(dtype, a.hidden, tokens)
        if dist.get_rank() == 0:
            print_table(rows)
            write_results(a.out, f"tp_gemm_world{dist.get_world_size()}", rows, {"dtype": a.dtype})
        dist.destroy_process_group()
        return 0
    rows = gemm_alone(dtype, a.quick)
    print_table(rows)
    write_results(a.out, "tp_gemm_fused_gemm", rows, {"dtype": a.dtype, "baseline": "cuBLAS (torch.matmul)",
                                                      "target_ratio": 0.9})
    srows = simulated_ag(dtype, a.quick)
    print_table(srows)
    write_results(a.out, "tp_gemm_simulated_ag", srows, {"dtype": a.dtype, "baseline": "copies then cuBLAS"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
