"""Launch-config sweep of the attention Triton kernels on one GPU (16-bit, sm_90 table entries).

The table in ``odysseus_kernels/kernels/attention/configs.py`` was chosen without a GPU (the largest
tiles that fit shared memory with no register spills). This times every kernel (forward, dQ, dK/dV)
under each candidate ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, causal and not, at
``batch*seq = --batch-tokens`` and ``--seq``, each candidate checked first on an odd-length problem
(seq 1104: partial tiles) against float64 attention: its max error must stay within 2x (+1e-3) of the
current table entry's, else it is marked ``wrong`` and never chosen. Rows: per kernel, head dim,
causal and candidate: ``ms`` (``do_bench`` median), ``vs_table`` (the table entry's time / this one:
> 1 is faster), ``err`` (max abs error vs float64), ``status`` (ok, wrong, or the launch error, e.g.
out of shared memory). The summary names, per kernel and head dim, the fastest correct candidate
over causal and non-causal time together.

Candidates are compiled first in ``--jobs`` parallel processes (Triton's disk cache then serves the
timing process), so the sweep fits a few minutes.

    python benchmarks/attention_tune.py [--quick] [--out DIR] [--head-dims 128,64] [--jobs 12] [--write-configs F]
                                        (--quick: head dim 128 only)
    python benchmarks/attention_tune.py --from-kit benchmarks/results/<run>/gpu_check.json --write-configs F
    ODYSSEUS_ATTENTION_CONFIGS=F python ...   # the ops then launch the configs in F (configs.load_overrides)

Without CUDA it prints "skipped: no CUDA" and exits 0.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_run_args, bench, print_table, write_json  # noqa: E402

# (BLOCK_M, BLOCK_N, num_warps, num_stages). fwd / dQ: BLOCK_M query rows per program, BLOCK_N keys per
# inner step; dK/dV: BLOCK_N keys per program, BLOCK_M query rows per inner step.
CANDIDATES = {
    "fwd": [(64, 32, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (128, 64, 4, 2),
            (128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 8, 2), (128, 128, 8, 2), (128, 128, 8, 3), (64, 128, 4, 2),
            (128, 32, 4, 3)],
    "bwd_dq": [(64, 32, 8, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 8, 2), (64, 64, 4, 3), (128, 32, 8, 2),
               (128, 32, 8, 3), (128, 32, 4, 3), (128, 64, 4, 2), (128, 32, 4, 2), (32, 64, 4, 2)],
    "bwd_dkdv": [(64, 32, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (32, 64, 4, 2), (32, 128, 8, 2),
                 (32, 128, 8, 3), (32, 128, 4, 3), (64, 128, 8, 2), (128, 64, 8, 2), (32, 128, 4, 2), (16, 64, 4, 2),
                 (16, 128, 8, 2)],
}
ODD_SEQ = 1104  # a multiple of 16 (the same compiled specialisation as the timed size), not of 64/128
DEV, DTYPE = "cuda", "bfloat16"  # --device cpu: a smoke run of this script under TRITON_INTERPRET=1 (fp16)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head-dims", default="128,64")
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--batch-tokens", type=int, default=32768)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--jobs", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    p.add_argument("--kernels", default="fwd,bwd_dq,bwd_dkdv")
    p.add_argument("--write-configs", metavar="FILE", default=None,
                   help="write the fastest correct configs as a file for ODYSSEUS_ATTENTION_CONFIGS")
    p.add_argument("--from-kit", metavar="GPU_CHECK_JSON", default=None,
                   help="no sweep: take the rows of a GPU kit run's tune_attention part (with --write-configs)")
    p.add_argument("--_compile", default=None, help=argparse.SUPPRESS)  # "i/n": compile share i of n
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--odd-seq", type=int, default=ODD_SEQ, help=argparse.SUPPRESS)
    p.add_argument("--max-cands", type=int, default=0, help=argparse.SUPPRESS)  # smoke runs: the first few only
    add_run_args(p)
    a = p.parse_args(argv)
    a.hd_list = [int(x) for x in a.head_dims.split(",")]
    a.kernel_list = a.kernels.split(",")
    if a.max_cands:
        for k in CANDIDATES:
            del CANDIDATES[k][a.max_cands:]
    return a


def _cases(a):
    return [(d, kernel, causal, cfg) for d in a.hd_list for kernel in a.kernel_list for causal in (False, True)
            for cfg in CANDIDATES[kernel]]


class Problem:
    """Inputs, the forward's out/lse and delta of one (batch, seq, heads, head dim), bf16 on the GPU."""

    def __init__(self, b, s, h, d, causal, seed=0):
        import torch

        from odysseus_kernels.kernels.attention.triton_attention import (attention_block_fwd_triton,
                                                                         attention_delta_triton)

        g = torch.Generator(device=DEV).manual_seed(seed)
        self.q, self.k, self.v, self.do = (torch.randn(b, s, h, d, device=DEV, dtype=getattr(torch, DTYPE), generator=g)
                                           for _ in range(4))
        self.causal = causal
        self.o, self.lse = attention_block_fwd_triton(self.q, self.k, self.v, causal=causal)
        self.delta = attention_delta_triton(self.o, self.do)

    def run(self, kernel):
        from odysseus_kernels.kernels.attention.triton_attention import (attention_block_bwd_triton,
                                                                         attention_block_fwd_triton)

        if kernel == "fwd":
            return attention_block_fwd_triton(self.q, self.k, self.v, causal=self.causal)[0]
        which = "dq" if kernel == "bwd_dq" else "dkdv"
        dq, dk, dv = attention_block_bwd_triton(self.do, self.q, self.k, self.v, self.o, self.lse, causal=self.causal,
                                                delta=self.delta, which=which)
        return dq if which == "dq" else (dk, dv)


def _use(kernel, d, cfg):
    """Make ``cfg`` the sm_90 table entry of ``kernel`` at head dim ``d`` (16-bit)."""
    from odysseus_kernels.kernels.attention import configs

    configs.TABLE[(_arch(), kernel, "16", configs.head_dim_bucket(d))] = configs.LaunchConfig(*cfg)


def _arch():
    from odysseus_kernels.kernels.attention import configs

    arch = configs.current_arch()
    return 80 if arch == "interpret" else arch


def _table_cfg(kernel, d):
    import dataclasses

    import torch

    from odysseus_kernels.kernels.attention import configs

    return dataclasses.astuple(configs.pick(_arch(), kernel, getattr(torch, DTYPE), d))


def _reference(p, kernel):
    """float64 attention of the problem ``p``: the kernel's outputs (out, dq, or (dk, dv))."""
    import torch

    from odysseus_kernels.kernels.attention import attention_ref

    q, k, v = (t.double().requires_grad_(kernel != "fwd") for t in (p.q, p.k, p.v))
    out = attention_ref(q, k, v, causal=p.causal)
    if kernel == "fwd":
        return out.detach()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), p.do.double())
    return dq if kernel == "bwd_dq" else (dk, dv)


def _err(got, want):
    if isinstance(got, tuple):
        return max(_err(g, w) for g, w in zip(got, want))
    return float((got.double() - want).abs().max())


def compile_share(a, i, n):
    """Run every case of share ``i`` of ``n`` once on the odd-length problem (Triton compiles it)."""
    import torch

    probs = {}
    for j, (d, kernel, causal, cfg) in enumerate(_cases(a)):
        if j % n != i:
            continue
        p = probs.get((d, causal))
        if p is None:
            p = probs[(d, causal)] = Problem(1, a.odd_seq, a.heads, d, causal)
        _use(kernel, d, cfg)
        try:
            p.run(kernel)
        except Exception as e:  # noqa: BLE001 - the timing process reports it
            print(f"compile {d} {kernel} {causal} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)


def precompile(a):
    t0 = time.monotonic()
    n = max(1, a.jobs)
    here = os.path.abspath(__file__)
    args = [f"--head-dims={a.head_dims}", f"--heads={a.heads}", f"--kernels={a.kernels}", f"--device={a.device}",
            f"--odd-seq={a.odd_seq}", f"--max-cands={a.max_cands}"]
    procs = [subprocess.Popen([sys.executable, here, *args, f"--_compile={i}/{n}"]) for i in range(n)]
    for pr in procs:
        pr.wait()
    print(f"attention_tune: compiled {len(_cases(a))} cases in {n} processes, {time.monotonic() - t0:.0f} s",
          flush=True)


def sweep(a, save):
    import torch

    rows = []
    b = max(1, a.batch_tokens // a.seq)
    for d in a.hd_list:
        for kernel in a.kernel_list:
            table_cfg = _table_cfg(kernel, d)
            cands = [table_cfg] + [c for c in CANDIDATES[kernel] if c != table_cfg]  # the table entry first
            for causal in (False, True):
                odd = Problem(1, a.odd_seq, a.heads, d, causal, seed=1)
                want = _reference(odd, kernel)
                big = Problem(b, a.seq, a.heads, d, causal, seed=2)
                base_err = base_ms = None
                for cfg in cands:
                    _use(kernel, d, cfg)
                    row = {"kernel": kernel, "head_dim": d, "causal": causal, "seq": a.seq, "batch": b, "arch": _arch(),
                           "dtype": "16",
                           "cfg": "x".join(map(str, cfg)), "table": cfg == table_cfg}
                    try:
                        err = _err(odd.run(kernel), want)
                        ms = bench(lambda: big.run(kernel), warmup=5, rep=30)
                    except Exception as e:  # noqa: BLE001 - out of resources, compile errors
                        row.update(status=f"{type(e).__name__}: {str(e)[:160]}")
                        rows.append(row)
                        continue
                    finally:
                        _use(kernel, d, table_cfg)
                    if cfg == table_cfg:
                        base_err, base_ms = err, ms
                    ok = base_err is not None and err <= 2 * base_err + 1e-3 and err == err
                    row.update(ms=ms, err=err, vs_table=None if base_ms is None else base_ms / ms,
                               status="ok" if ok else "wrong")
                    rows.append(row)
                del odd, big
                if DEV == "cuda":
                    torch.cuda.empty_cache()
            save(rows)
    return rows


def best(rows):
    """Per (kernel, head dim): the correct candidate with the least causal + non-causal time (a candidate
    counts only when it ran and was correct in both)."""
    out = []
    keys = sorted({(r["kernel"], r["head_dim"]) for r in rows})
    for kernel, d in keys:
        tot = {}
        for r in rows:
            if (r["kernel"], r["head_dim"]) == (kernel, d):
                tot.setdefault(r["cfg"], []).append(r)
        scored = [(sum(x["ms"] for x in rs), cfg, rs) for cfg, rs in tot.items()
                  if len(rs) == 2 and all(x.get("status") == "ok" for x in rs)]
        table = [sum(x["ms"] for x in rs) for cfg, rs in tot.items() if rs[0]["table"] and "ms" in rs[0]
                 and len(rs) == 2 and "ms" in rs[1]]
        if not scored:
            continue
        t, cfg, _ = min(scored)
        out.append({"kernel": kernel, "head_dim": d, "best": cfg, "best_ms": t, "table_ms": table[0] if table else None,
                    "speedup": (table[0] / t) if table else None, "arch": rows[0].get("arch", 90),
                    "dtype": rows[0].get("dtype", "16")})
    return out


def configs_doc(summary, source: str) -> dict:
    """The file :func:`odysseus_kernels.kernels.attention.configs.load_overrides` reads: every best config
    that beats the table (the others stay as they are)."""
    from odysseus_kernels.kernels.attention.configs import head_dim_bucket

    return {"source": source, "attention_configs": [
        {"arch": b["arch"], "kernel": b["kernel"], "dtype": b["dtype"], "head_dim": head_dim_bucket(b["head_dim"]),
         "cfg": [int(x) for x in b["best"].split("x")], "speedup": b["speedup"]}
        for b in summary if b["speedup"] is not None and b["speedup"] > 1.0]}


def write_configs(path, summary, source):
    import json

    with open(path, "w") as f:
        json.dump(configs_doc(summary, source), f, indent=1)
    print(f"wrote {path}")


def main(argv=None):
    global DEV, DTYPE
    a = parse(argv)
    import torch

    if a.device == "cpu":
        DEV, DTYPE = "cpu", "float16"
    if a.from_kit:
        import json

        with open(a.from_kit) as f:
            kit = json.load(f)
        rows = kit["benchmarks"]["attention_tune"]["rows"]  # the kit keys benchmarks by their JSON's name
        print_table(best(rows), ["kernel", "head_dim", "best", "best_ms", "table_ms", "speedup"])
        if a.write_configs:
            write_configs(a.write_configs, best(rows), f"{a.from_kit} ({kit.get('device')}, {kit.get('date')})")
        return 0
    if a._compile:
        i, n = map(int, a._compile.split("/"))
        compile_share(a, i, n)
        return 0
    if DEV == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    if a.quick and a.head_dims == "128,64":  # --quick: head dim 128 only (about 50 s on an H200 with 14 jobs)
        a.hd_list = [128]
    precompile(a)

    def save(rows):
        write_json(a.out, "attention_tune", rows, {"best": best(rows)})

    rows = sweep(a, save)
    print_table(rows, ["kernel", "head_dim", "causal", "cfg", "ms", "vs_table", "err", "status"])
    summary = best(rows)
    print_table(summary, ["kernel", "head_dim", "best", "best_ms", "table_ms", "speedup"])
    save(rows)
    if a.write_configs:
        write_configs(a.write_configs, summary, f"attention_tune.py on {torch.cuda.get_device_name() if DEV == 'cuda' else DEV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
