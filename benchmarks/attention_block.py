"""Block attention on one GPU, two comparisons in one run (bf16, head_dim 128 by default):

1. **Per kernel**: our Triton forward and forward+backward against PyTorch SDPA (flash and cuDNN
   backends) and flash-attn when installed, causal and not, seq 4K-32K at constant batch*seq; rows
   carry medians (ms), TFLOP/s and ``ours_vs_<baseline>`` (baseline time / ours: >= 1.0 means we are
   as fast; target >= 1.0 against SDPA flash).
2. **Whole ring on one GPU**: the N*N step launches of a causal zigzag ring of N ranks (every rank's
   N steps, through the same per-step path the ring uses: one fused launch per step forward, merge
   in-kernel; delta + dQ + dK/dV launches backward) against one full-length causal call over the
   same L tokens; ``ring_vs_full`` = ring time / full time (target <= 1.10: slicing the work into
   ring steps costs at most 10%).

    python benchmarks/attention_block.py --out benchmarks/results/attention_block-$(date +%F)-h100
    python benchmarks/attention_block.py --quick      # 4K and 8K only

Without CUDA it prints "skipped: no CUDA" and exits 0.
"""
from __future__ import annotations

import argparse

import torch

from _common import add_run_args, bench, print_table, write_json


def flops(b, s, h, d, causal, mode):
    f = 4 * b * s * s * h * d // (2 if causal else 1)
    return f * (3.5 if mode == "fwd+bwd" else 1.0)  # backward ~2.5x forward (recompute of P included)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", default=None, help="comma-separated sequence lengths (default 4096,16384,32768; "
                   "--quick: 4096,8192)")
    p.add_argument("--batch-tokens", type=int, default=32768, help="batch * seq kept constant")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--world", type=int, default=8, help="ranks of the simulated zigzag ring")
    p.add_argument("--ring-only", action="store_true", help="only the whole-ring comparison")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke run under TRITON_INTERPRET=1
    add_run_args(p)
    a = p.parse_args(argv)
    a.seq_list = [int(x) for x in (a.seqs or ("4096,8192" if a.quick else "4096,16384,32768")).split(",")]
    return a


def kernel_rows(a, dt):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from odysseus_kernels.kernels.attention import attention_block_bwd, attention_block_fwd

    try:
        import flash_attn
    except ImportError:
        flash_attn = None
    rows = []
    for s in a.seq_list:
        b = max(1, a.batch_tokens // s)
        h, d = a.heads, a.head_dim
        q, k, v, do = (torch.randn(b, s, h, d, device="cuda", dtype=dt) for _ in range(4))
        for causal in (False, True):
            impls = {}

            def ours_fwd():
                return attention_block_fwd(q, k, v, causal=causal, backend="triton")

            def ours_fb():
                o, lse = attention_block_fwd(q, k, v, causal=causal, backend="triton")
                return attention_block_bwd(do, q, k, v, o, lse, causal=causal, backend="triton")

            impls["ours"] = (ours_fwd, ours_fb)
            qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_(True) for t in (q, k, v))
            for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def fwd(backend=backend):
                    with sdpa_kernel(backend):
                        return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

                def fb(fwd=fwd):
                    o = fwd()
                    return torch.autograd.grad(o, (qt, kt, vt), do.transpose(1, 2))

                impls[name] = (fwd, fb)
            if flash_attn is not None:
                qf, kf, vf = (t.detach().requires_grad_(True) for t in (q, k, v))
                impls["flash_attn"] = (lambda: flash_attn.flash_attn_func(qf, kf, vf, causal=causal),
                                       lambda: torch.autograd.grad(flash_attn.flash_attn_func(qf, kf, vf, causal=causal),
                                                                   (qf, kf, vf), do))
            times = {}
            for name, (fwd, fb) in impls.items():
                for mode, fn in (("fwd", fwd), ("fwd+bwd", fb)):
                    try:
                        times[(name, mode)] = bench(fn)
                    except RuntimeError as e:  # a backend not available for these shapes
                        print(f"{name} {mode}: {e}")
            for mode in ("fwd", "fwd+bwd"):
                row = {"bench": "kernel", "seq": s, "batch": b, "causal": causal, "mode": mode}
                for name in impls:
                    t = times.get((name, mode))
                    row[f"{name}_ms"] = t
                    row[f"{name}_tflops"] = None if t is None else flops(b, s, h, d, causal, mode) / t / 1e9
                for base in ("sdpa_flash", "sdpa_cudnn", "flash_attn"):
                    if times.get((base, mode)) and times.get(("ours", mode)):
                        row[f"ours_vs_{base}"] = times[(base, mode)] / times[("ours", mode)]
                rows.append(row)
    return rows


def ring_rows(a, dt):
    """Every rank's steps of a causal zigzag ring of ``a.world`` ranks, on one GPU, vs one full call."""
    from odysseus_kernels.kernels.attention import attention_block_bwd, attention_block_fwd
    from odysseus_kernels.kernels.attention.triton_attention import (Positions, attention_block_bwd_triton,
                                                                     attention_block_fwd_triton, attention_delta_triton)
    from odysseus_kernels.ops.layout import layout_spans

    n, h, d, dev = a.world, a.heads, a.head_dim, a.device
    rows = []
    for L in a.seq_list:
        b = max(1, a.batch_tokens // L)
        c = L // n
        spans = layout_spans("zigzag", n, L)
        pos = [Positions(spans[r], None, torch.device(dev)) for r in range(n)]
        shard = lambda t: [torch.cat([t[:, s:s + m] for s, m in spans[r]], 1).contiguous() for r in range(n)]  # noqa: E731
        q, k, v, do = (torch.randn(b, L, h, d, device=dev, dtype=dt) for _ in range(4))
        qs, ks, vs, dos = shard(q), shard(k), shard(v), shard(do)
        outs = [torch.empty(b, c, h, d, device=dev, dtype=torch.float32) for _ in range(n)]
        lses = [torch.empty(b, h, c, device=dev, dtype=torch.float32) for _ in range(n)]

        def ring_fwd():
            for r in range(n):
                for t in range(n):
                    src = (r - t) % n
                    attention_block_fwd_triton(qs[r], ks[src], vs[src], causal=True, out=outs[r], lse=lses[r],
                                               accumulate=t > 0, q_pos=pos[r], k_pos=pos[src])

        ring_fwd()
        full, _ = attention_block_fwd(q, k, v, causal=True, backend="triton", out_dtype=torch.float32)
        err = max((outs[r] - shard(full)[r]).abs().max().item() for r in range(n))  # the steps add up to the full call
        o16 = [o.to(dt) for o in outs]
        dq = [torch.empty(b, c, h, d, device=dev, dtype=torch.float32) for _ in range(n)]
        dkv = [torch.empty(2, b, c, h, d, device=dev, dtype=torch.float32) for _ in range(n)]

        def ring_bwd():
            deltas = [attention_delta_triton(o16[r], dos[r]) for r in range(n)]
            for r in range(n):
                for t in range(n):
                    src = (r - t) % n
                    kw = dict(causal=True, delta=deltas[r], q_pos=pos[r], k_pos=pos[src])
                    attention_block_bwd_triton(dos[r], qs[r], ks[src], vs[src], o16[r], lses[r], dq=dq[r],
                                               accumulate=t > 0, which="dq", **kw)
                    attention_block_bwd_triton(dos[r], qs[r], ks[src], vs[src], o16[r], lses[r], dk=dkv[src][0],
                                               dv=dkv[src][1], accumulate=r != src, which="dkdv", **kw)

        def ring_fb():
            ring_fwd()
            ring_bwd()

        def full_fwd():
            return attention_block_fwd(q, k, v, causal=True, backend="triton")

        def full_fb():
            o, lse = attention_block_fwd(q, k, v, causal=True, backend="triton")
            return attention_block_bwd(do, q, k, v, o, lse, causal=True, backend="triton")

        for mode, ring_fn, full_fn in (("fwd", ring_fwd, full_fwd), ("fwd+bwd", ring_fb, full_fb)):
            tr, tf = bench(ring_fn), bench(full_fn)
            launches = n * n if mode == "fwd" else 3 * n * n + n  # fwd steps; + delta, dQ, dK/dV
            rows.append({"bench": "ring_on_one_gpu", "seq": L, "batch": b, "world": n, "causal": True, "mode": mode,
                         "ring_ms": tr, "full_ms": tf, "ring_vs_full": tr / tf, "launches": launches,
                         "max_err_vs_full": err})
    return rows


def main(argv=None):
    a = parse(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("attention_block.py: skipped: no CUDA")
        return 0
    dt = torch.bfloat16 if a.device == "cuda" else torch.float32
    rows = [] if a.ring_only else kernel_rows(a, dt)
    if rows:
        cols = ["seq", "causal", "mode"] + [c for c in rows[0] if c.endswith("tflops") or c.startswith("ours_vs")]
        print_table(rows, cols)
    rr = ring_rows(a, dt)
    print_table(rr, ["seq", "world", "mode", "ring_ms", "full_ms", "ring_vs_full", "max_err_vs_full"])
    write_json(a.out, "attention_block", rows + rr,
               {"heads": a.heads, "head_dim": a.head_dim, "dtype": "bfloat16", "world": a.world, "quick": a.quick})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
