"""Linear attention local kernels: our chunked Triton kernels (the compute LASP-2 runs between its two
AllGathers) against flash-linear-attention's ``chunk_simple_gla`` (PyPI ``fla-core``) when it is
importable, and against our chunked torch path always; also the whole LASP-2 op on one rank
(autograd, state scan and cross-shard terms included). Same semantics everywhere: causal, per-head
log-decay (``g_gamma`` in fla), scale 1, no normaliser. Forward and forward+backward,
``triton.testing.do_bench`` medians, one table with ratios (``fla_ms / ours_ms``: > 1 means ours is
faster), JSON with device, versions and commit.

    python benchmarks/linear_attention.py --out benchmarks/results/linear_attention-$(date +%F)-h100

Without a GPU it times the torch path only (use small ``--seqs``).
"""
from __future__ import annotations

import argparse
import inspect

import torch
from _common import bench, print_table, write_json

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def nominal_flops(b, s, h, dk, dv, bt=64):
    """Matmul FLOPs of the chunked algorithm (chunk ``bt``), the same count for every implementation:
    forward ``4 Dk Dv + 2 bt (Dk + Dv)`` per token and head (state pass, ``q h``, ``Q K^T``, ``A V``),
    backward ``10 Dk Dv + 2 bt (3 Dk + 2 Dv)`` (state-gradient pass, recomputed states, five more)."""
    tok = b * s * h
    return tok * (4 * dk * dv + 2 * bt * (dk + dv)), tok * (10 * dk * dv + 2 * bt * (3 * dk + 2 * dv))


def _fla():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    return chunk_simple_gla


def implementations(q, k, v, do, ld, cuda):
    """name -> (forward fn, forward+backward fn, forward output for the cross-check)."""
    from odysseus_kernels.kernels.linear_attention.api import (
        intra_chunk_bwd,
        intra_chunk_fwd,
    )
    from odysseus_kernels.ops.lasp2 import lasp2_linear_attention

    impls = {}
    backends = ("triton", "torch") if cuda else ("torch",)
    for be in backends:
        def fwd(be=be):
            return intra_chunk_fwd(q, k, v, log_decay=ld, backend=be, out_dtype=q.dtype)

        def fwd_bwd(be=be):
            fwd(be)
            return intra_chunk_bwd(q, k, v, do, log_decay=ld, backend=be, out_dtype=q.dtype)

        impls[f"ours_{be}"] = (fwd, fwd_bwd, fwd)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    decay = ld.to(q.device)

    def op_fwd():
        with torch.no_grad():
            return lasp2_linear_attention(q, k, v, decay=decay)

    def op_fwd_bwd():
        lasp2_linear_attention(*leaves, decay=decay).backward(do)

    impls["lasp2_op_N1"] = (op_fwd, op_fwd_bwd, op_fwd)
    chunk_simple_gla = _fla() if cuda else None
    if chunk_simple_gla is not None:
        h = q.shape[2]
        if "g_gamma" in inspect.signature(chunk_simple_gla).parameters:
            gate = {"g_gamma": ld.float()}
        else:  # older fla: a per-token gate, the same log-decay at every token
            gate = {"g": ld.float().view(1, 1, h).expand(q.shape[0], q.shape[1], h).contiguous()}

        def fla_fwd():
            with torch.no_grad():
                return chunk_simple_gla(q, k, v, scale=1.0, **gate)[0]

        def fla_fwd_bwd():
            chunk_simple_gla(*leaves, scale=1.0, **gate)[0].backward(do)

        impls["fla"] = (fla_fwd, fla_fwd_bwd, fla_fwd)
    return impls


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", default="8192,16384,32768,65536")
    p.add_argument("--dims", default="64,128", help="head dims (Dk = Dv)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--no-decay", action="store_true", help="lambda = 1 (fla: g_gamma = 0)")
    p.add_argument("--out", default=None, help="directory for linear_attention.json")
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    dt = DTYPES[a.dtype] if cuda else torch.float32
    if not cuda:
        print("no CUDA GPU: timing the torch path only")
    elif _fla() is None:
        print("fla not importable (pip install fla-core): comparing with our torch path only")
    rows = []
    b, nh = a.batch, a.heads
    for d in (int(x) for x in a.dims.split(",")):
        for s in (int(x) for x in a.seqs.split(",")):
            g = torch.Generator(device=dev).manual_seed(s + d)
            # q, k scaled so that the scores stay O(1) and the cross-check is meaningful in bf16
            q, k = (torch.randn(b, s, nh, d, device=dev, generator=g).div(d ** 0.5).to(dt) for _ in range(2))
            v, do = (torch.randn(b, s, nh, d, device=dev, generator=g).to(dt) for _ in range(2))
            ld = torch.zeros(nh, device=dev) if a.no_decay else -torch.rand(nh, device=dev, generator=g) * 0.1
            impls = implementations(q, k, v, do, ld, cuda)
            ref_out = impls["ours_triton" if cuda else "ours_torch"][2]().float()
            f_fwd, f_bwd = nominal_flops(b, s, nh, d, d)
            for mode in ("fwd", "fwd+bwd"):
                row = {"head_dim": d, "seq": s, "mode": mode}
                for name, fns in impls.items():
                    try:
                        row[f"{name}_ms"] = bench(fns[0] if mode == "fwd" else fns[1])
                    except (RuntimeError, TypeError, ValueError) as e:  # OOM, an fla API difference
                        print(f"{name} {mode} d={d} s={s}: {type(e).__name__}: {str(e)[:200]}")
                        row[f"{name}_ms"] = None
                ours = row.get("ours_triton_ms") or row.get("ours_torch_ms")
                flops = f_fwd if mode == "fwd" else f_fwd + f_bwd
                row["ours_tflops"] = flops / ours / 1e9 if ours else None
                for peer in ("fla", "ours_torch"):
                    if cuda and row.get(f"{peer}_ms") and row.get("ours_triton_ms"):
                        row[f"{peer}/ours"] = row[f"{peer}_ms"] / row["ours_triton_ms"]
                if mode == "fwd" and "fla" in impls:  # same semantics: the outputs must agree
                    diff = (impls["fla"][2]().float() - ref_out).abs().max() / ref_out.abs().max()
                    row["fla_rel_diff"] = float(diff)
                rows.append(row)
            del impls, q, k, v, do
            if cuda:
                torch.cuda.empty_cache()
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print_table(rows, cols)
    write_json(a.out, "linear_attention", rows, {"batch": b, "heads": nh, "dtype": str(dt),
                                                  "decay": not a.no_decay, "fla": _fla() is not None})


if __name__ == "__main__":
    main()
