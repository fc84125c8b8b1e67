"""AllGather-GEMM / GEMM-ReduceScatter: what decomposing the GEMM costs, and the overlap.

On one GPU (what a lent machine has) it measures the decomposition overhead: the N chunked GEMMs
the ring schedule runs against one GEMM of the same total size, for N = 2, 4, 8 (target <= 5%), and
the ops themselves in a world of one (no communication: their fixed overhead). The overlap needs
several GPUs; run this script under torchrun for that (it then compares ``overlap=True`` with the
plain collective + GEMM and reports the speed-up):

    torchrun --nproc-per-node 8 benchmarks/tp_gemm.py --out benchmarks/results/tp_gemm-8gpu

Prints a table and writes JSON with device, versions and commit.
"""
from __future__ import annotations

import argparse
import os

import torch

from _common import bench, print_table, write_json


def decomposition(dtype, device, sizes) -> list[dict]:
    rows = []
    for m, k, n_out in sizes:
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n_out, k, device=device, dtype=dtype)
        one = bench(lambda: x @ w.t())
        for parts in (2, 4, 8):
            xs = x.chunk(parts)
            out = torch.empty(m, n_out, device=device, dtype=dtype)

            def chunked():
                for i, xc in enumerate(xs):
                    torch.matmul(xc, w.t(), out=out[i * (m // parts):(i + 1) * (m // parts)])

            t = bench(chunked)
            rows.append({"M": m, "K": k, "N": n_out, "chunks": parts, "one_gemm_ms": one, "chunked_ms": t,
                         "overhead_%": 100 * (t / one - 1), "tflops_one": 2 * m * k * n_out / one / 1e9})
    return rows


def distributed(dtype, device, m_local, k, n_out) -> list[dict]:
    import odysseus_kernels as ok

    info = ok.group_info()
    rows = []
    x = torch.randn(1, m_local, k, device=device, dtype=dtype)
    w = torch.randn(n_out // info.size, k, device=device, dtype=dtype)
    h = torch.randn(1, m_local * info.size, k // info.size, device=device, dtype=dtype)
    w2 = torch.randn(n_out, k // info.size, device=device, dtype=dtype)
    for name, fn in (("all_gather_matmul", lambda ov: ok.all_gather_matmul(x, w, overlap=ov)),
                     ("matmul_reduce_scatter", lambda ov: ok.matmul_reduce_scatter(h, w2, overlap=ov))):
        plain = bench(lambda: fn(False))
        over = bench(lambda: fn(True))
        rows.append({"op": name, "world": info.size, "M_local": m_local, "K": k, "N": n_out, "plain_ms": plain,
                     "overlap_ms": over, "speedup": plain / over})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        rows = distributed(dtype, device, 4096, 8192, 8192)
        if dist.get_rank() == 0:
            print_table(rows, list(rows[0]))
            write_json(a.out, "tp_gemm_distributed", rows)
        dist.destroy_process_group()
        return
    sizes = [(8192, 8192, 8192), (16384, 4096, 14336), (4096, 8192, 28672)] if device == "cuda" else [(512, 256, 256)]
    rows = decomposition(dtype, device, sizes)
    print_table(rows, list(rows[0]))
    rows2 = distributed(dtype, device, 4096 if device == "cuda" else 64, 4096 if device == "cuda" else 64,
                        4096 if device == "cuda" else 64)
    print_table(rows2, list(rows2[0]))
    write_json(a.out, "tp_gemm", rows + rows2)


if __name__ == "__main__":
    main()
