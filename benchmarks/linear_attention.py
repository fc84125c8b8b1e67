"""Linear attention shard-local compute: our chunk-parallel Triton kernels (the compute LASP-2 runs
between its two AllGathers; here as the whole LASP-2 op on one rank, autograd included) against
flash-linear-attention (PyPI ``fla-core``) in the same run: ``chunk_simple_gla`` with the per-head
``g_gamma`` and with the per-token ``g``, and ``chunk_gla`` with the per-token ``g`` broadcast over the
key channels (the same semantics; chunk_gla is the general per-channel kernel). When fla cannot be
imported the baseline is our own chunked torch path, and the output says so. Same semantics
everywhere: causal, scale ``Dk^-0.5``, no normaliser. bf16, head dims 64/128, 4K-64K tokens
(``--quick``: 2 sizes), forward and forward+backward, ``triton.testing.do_bench`` medians, ratios
``baseline_ms / ours_ms`` (> 1: ours is faster), JSON with device, versions and commit.

    python benchmarks/linear_attention.py --out benchmarks/results/linear_attention-$(date +%F)-h100
    python benchmarks/linear_attention.py --quick

Needs a CUDA GPU: without one it prints "skipped: no CUDA" and exits 0.
"""
from __future__ import annotations

import argparse
import inspect
import sys

import torch
from _common import add_run_args, bench, print_table, write_json

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _fla():
    """``{"chunk_simple_gla": fn, "chunk_gla": fn}`` of the installed fla, or ``{}``."""
    out = {}
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        out["chunk_simple_gla"] = chunk_simple_gla
    except ImportError:
        return {}
    try:
        from fla.ops.gla import chunk_gla

        out["chunk_gla"] = chunk_gla
    except ImportError:
        pass
    return out


def _fla_call(fn, q, k, v, **kw):
    """fla in our ``[B, T, H, D]`` layout (older releases default to head-first)."""
    params = inspect.signature(fn).parameters
    if "head_first" in params:
        kw["head_first"] = False
    return fn(q, k, v, scale=q.shape[-1] ** -0.5, **kw)[0]


def implementations(q, k, v, do, decay, fla):
    """name -> (forward fn, forward+backward fn) for one decay mode; the first is ours, the others
    are baselines. Every forward returns the output (for the cross-check)."""
    from odysseus_kernels.ops.lasp2 import lasp2_linear_attention

    b, s, h, d = q.shape
    gen = torch.Generator(device=q.device).manual_seed(s + d)
    g = gg = None
    if decay == "g":  # like GLA's gate: log-sigmoid of something, mildly negative
        g = torch.nn.functional.logsigmoid(torch.randn(b, s, h, device=q.device, generator=gen) + 4.0)
    else:
        gg = -torch.rand(h, device=q.device, generator=gen) * 0.1
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]

    def wrap(f):
        def fwd():
            with torch.no_grad():
                return f(q, k, v)

        def fwd_bwd():
            for t in leaves:
                t.grad = None
            f(*leaves).backward(do)

        return fwd, fwd_bwd

    impls = {"ours": wrap(lambda a, b_, c: lasp2_linear_attention(a, b_, c, g=g, g_gamma=gg, backend="triton"))}
    if fla:
        if gg is not None:
            impls["fla_chunk_simple_gla"] = wrap(
                lambda a, b_, c: _fla_call(fla["chunk_simple_gla"], a, b_, c, g_gamma=gg))
        else:
            impls["fla_chunk_simple_gla"] = wrap(lambda a, b_, c: _fla_call(fla["chunk_simple_gla"], a, b_, c, g=g))
            if "chunk_gla" in fla:
                gk = g.unsqueeze(-1).expand(b, s, h, d).contiguous()
                impls["fla_chunk_gla"] = wrap(lambda a, b_, c: _fla_call(fla["chunk_gla"], a, b_, c, g=gk))
    else:  # our chunked torch path (the same math, PyTorch ops)
        impls["ours_torch"] = wrap(lambda a, b_, c: lasp2_linear_attention(a, b_, c, g=g, g_gamma=gg,
                                                                           backend="torch"))
    return impls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(p)
    p.add_argument("--seqs", default=None, help="tokens, comma-separated (default 4096..65536; --quick: 4096,16384)")
    p.add_argument("--dims", default="64,128", help="head dims (Dk = Dv)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--decays", default="g_gamma,g", help="g_gamma (per head) and/or g (per token)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("linear_attention benchmark skipped: no CUDA (the Triton kernels are timed on a GPU only)")
        return 0
    seqs = a.seqs or ("4096,16384" if a.quick else "4096,8192,16384,32768,65536")
    fla = _fla()
    baseline = "fla" if fla else "ours_torch"
    if not fla:
        print("fla not importable (pip install fla-core): the baseline is OUR OWN chunked torch path, not fla")
    dt = DTYPES[a.dtype]
    rows = []
    b, nh = a.batch, a.heads
    for decay in a.decays.split(","):
        for d in (int(x) for x in a.dims.split(",")):
            for s in (int(x) for x in seqs.split(",")):
                gen = torch.Generator(device="cuda").manual_seed(s + d)
                q, k, v, do = (torch.randn(b, s, nh, d, device="cuda", generator=gen).to(dt) for _ in range(4))
                impls = implementations(q, k, v, do, decay, fla)
                ref = impls["ours"][0]().float()
                for mode in ("fwd", "fwd+bwd"):
                    row = {"decay": decay, "head_dim": d, "seq": s, "mode": mode}
                    for name, (fwd, fwd_bwd) in impls.items():
                        try:
                            row[f"{name}_ms"] = bench(fwd if mode == "fwd" else fwd_bwd)
                        except (RuntimeError, TypeError, ValueError) as e:  # OOM, an fla API difference
                            print(f"{name} {mode} {decay} d={d} s={s}: {type(e).__name__}: {str(e)[:200]}")
                            row[f"{name}_ms"] = None
                        if name != "ours" and row[f"{name}_ms"] and row["ours_ms"]:
                            row[f"{name}/ours"] = row[f"{name}_ms"] / row["ours_ms"]
                        if name != "ours" and mode == "fwd":  # same semantics: the outputs must agree
                            row[f"{name}_rel_diff"] = float((fwd().float() - ref).abs().max() / ref.abs().max())
                    rows.append(row)
                del impls, q, k, v, do
                torch.cuda.empty_cache()
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print_table(rows, cols)
    write_json(a.out, "linear_attention", rows, {"batch": b, "heads": nh, "dtype": str(dt), "baseline": baseline,
                                                  "quick": a.quick})
    return 0


if __name__ == "__main__":
    sys.exit(main())
