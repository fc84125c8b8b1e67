"""Linear attention local kernels: our Triton fused-chunk kernels (the part of LASP-2 that runs
between its two AllGathers) against flash-linear-attention's ``chunk_simple_gla`` (PyPI
``fla-core``) when installed, and against our blocked torch path; bf16, seq 8K-64K, head_dim 64 and
128, per-head decay, forward and forward+backward, one run, with ratios. Needs a GPU.

    python benchmarks/linear_attention.py --out benchmarks/results/linear_attention-$(date +%F)-h100
"""
from __future__ import annotations

import argparse

import torch

from _common import bench, print_table, write_json


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", default="8192,16384,32768,65536")
    p.add_argument("--dims", default="64,128")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("linear_attention.py needs a CUDA GPU")
    from odysseus_kernels.kernels.linear_attention.api import intra_chunk_bwd, intra_chunk_fwd

    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        chunk_simple_gla = None
    rows = []
    h, dt = a.heads, torch.bfloat16
    for d in (int(x) for x in a.dims.split(",")):
        for s in (int(x) for x in a.seqs.split(",")):
            q, k, v, do = (torch.randn(1, s, h, d, device="cuda", dtype=dt) for _ in range(4))
            ld = -torch.rand(h, device="cuda") * 0.1
            impls = {
                "ours_triton": (lambda: intra_chunk_fwd(q, k, v, log_decay=ld, backend="triton"),
                                lambda: (intra_chunk_fwd(q, k, v, log_decay=ld, backend="triton"),
                                         intra_chunk_bwd(q, k, v, do, log_decay=ld, backend="triton"))),
                "ours_torch": (lambda: intra_chunk_fwd(q, k, v, log_decay=ld, backend="torch"),
                               lambda: (intra_chunk_fwd(q, k, v, log_decay=ld, backend="torch"),
                                        intra_chunk_bwd(q, k, v, do, log_decay=ld, backend="torch"))),
            }
            if chunk_simple_gla is not None:
                g = ld.view(1, 1, h).expand(1, s, h).contiguous()
                qf, kf, vf = (t.detach().requires_grad_(True) for t in (q, k, v))

                def fla_fwd():
                    return chunk_simple_gla(qf, kf, vf, g=g, scale=1.0)[0]

                def fla_fb():
                    return torch.autograd.grad(fla_fwd(), (qf, kf, vf), do)

                impls["fla_chunk_simple_gla"] = (fla_fwd, fla_fb)
            for mode in (0, 1):
                row = {"head_dim": d, "seq": s, "mode": ("fwd", "fwd+bwd")[mode]}
                for name, fns in impls.items():
                    try:
                        row[f"{name}_ms"] = bench(fns[mode])
                    except (RuntimeError, TypeError) as e:  # e.g. an fla API difference
                        print(f"{name}: {e}")
                        row[f"{name}_ms"] = None
                if row.get("fla_chunk_simple_gla_ms") and row.get("ours_triton_ms"):
                    row["ours_vs_fla"] = row["fla_chunk_simple_gla_ms"] / row["ours_triton_ms"]
                rows.append(row)
    print_table(rows, list(rows[0]))
    write_json(a.out, "linear_attention", rows, {"heads": h, "dtype": "bfloat16"})


if __name__ == "__main__":
    main()
