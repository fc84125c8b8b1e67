"""Block attention: our Triton kernels against PyTorch SDPA (flash and cuDNN backends) and
flash-attn when installed; bf16, head_dim 128, seq 4K/16K/32K, causal and not, forward and
forward+backward TFLOP/s with ratios, one run. Needs a GPU.

    python benchmarks/attention_block.py --out benchmarks/results/attention_block-$(date +%F)-h100
"""
from __future__ import annotations

import argparse

import torch

from _common import bench, print_table, write_json


def flops(b, s, h, d, causal, mode):
    f = 4 * b * s * s * h * d // (2 if causal else 1)
    return f * (3.5 if mode == "fwd+bwd" else 1.0)  # backward ~2.5x forward (recompute of P included)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", default="4096,16384,32768")
    p.add_argument("--batch-tokens", type=int, default=32768, help="batch * seq kept constant")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_block.py needs a CUDA GPU")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from odysseus_kernels.kernels.attention import attention_block_bwd, attention_block_fwd

    try:
        import flash_attn
    except ImportError:
        flash_attn = None
    rows = []
    dt = torch.bfloat16
    for s in (int(x) for x in a.seqs.split(",")):
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
                row = {"seq": s, "batch": b, "causal": causal, "mode": mode}
                for name in impls:
                    t = times.get((name, mode))
                    row[f"{name}_ms"] = t
                    row[f"{name}_tflops"] = None if t is None else flops(b, s, h, d, causal, mode) / t / 1e9
                for base in ("sdpa_flash", "sdpa_cudnn"):
                    if times.get((base, mode)) and times.get(("ours", mode)):
                        row[f"ours_vs_{base}"] = times[(base, mode)] / times[("ours", mode)]
                rows.append(row)
    cols = ["seq", "causal", "mode"] + [c for c in rows[0] if c.endswith("tflops") or c.startswith("ours_vs")]
    print_table(rows, cols)
    write_json(a.out, "attention_block", rows, {"heads": a.heads, "head_dim": a.head_dim, "dtype": "bfloat16"})


if __name__ == "__main__":
    main()
