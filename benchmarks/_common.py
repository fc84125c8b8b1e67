"""Shared benchmark harness: median timings, run metadata (device, versions, commit), a printed
table, and results written as JSON (with the metadata) and CSV into an ``--out`` directory.

    from _common import bench, print_table, write_results
    rows = [{"M": 4096, "ms": bench(lambda: a @ b)}]
    print_table(rows)
    write_results(args.out, "my_bench", rows, {"dtype": "bfloat16"})
"""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import time


def bench(fn, *, warmup: int = 25, rep: int = 100, iters: int | None = None) -> float:
    """Median milliseconds of one ``fn()`` call.

    On CUDA, ``triton.testing.do_bench`` (``warmup``/``rep`` in milliseconds of run time, L2 flushed
    between calls). With ``iters`` (use it for anything that communicates: every rank must call
    ``fn`` equally often, which a time budget does not guarantee): ``warmup`` then ``iters`` timed
    calls, each between CUDA events. On CPU, wall clock with the same two conventions.
    """
    import torch

    cuda = torch.cuda.is_available()
    if cuda and iters is None:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    if iters is None:  # CPU, time budget: estimate the call time, then fill the budgets
        t0 = time.perf_counter()
        fn()
        est = max(time.perf_counter() - t0, 1e-6) * 1e3
        warmup, iters = max(1, int(warmup / est)), max(3, int(rep / est))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def metadata() -> dict:
    """Date, device, versions (torch, CUDA, Triton, Python) and git commit of this run."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, capture_output=True,
                               text=True, cwd=here).stdout.strip()
        commit = (commit + ("-dirty" if dirty else "")) or None
    except OSError:
        commit = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
        "python": platform.python_version(), "commit": commit,
    }


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def print_table(rows: list[dict], cols: list[str] | None = None) -> None:
    """Print ``rows`` as right-aligned columns (``cols``: their order; default the first row's keys)."""
    if not rows:
        return
    cols = cols or list(rows[0])
    widths = [max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).rjust(w) for c, w in zip(cols, widths)))


def write_json(out_dir: str | None, name: str, rows: list[dict], extra: dict | None = None) -> str | None:
    """``<out_dir>/<name>.json``: ``{"meta": metadata() + extra, "results": rows}`` (nothing if no dir)."""
    if not out_dir:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path + ".tmp", "w") as f:  # then renamed: a run killed mid-write leaves the previous file whole
        json.dump({"meta": {**metadata(), **(extra or {})}, "results": rows}, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    return path


def write_csv(out_dir: str | None, name: str, rows: list[dict]) -> str | None:
    """``<out_dir>/<name>.csv``: one line per row, columns the union of the rows' keys."""
    if not out_dir or not rows:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.csv")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")
    return path


def write_results(out_dir: str | None, name: str, rows: list[dict], extra: dict | None = None) -> None:
    """Both :func:`write_json` and :func:`write_csv`."""
    write_json(out_dir, name, rows, extra)
    write_csv(out_dir, name, rows)


def add_run_args(parser) -> None:
    """The options every benchmark takes (the GPU kit ``scripts/gpu_check.sh`` relies on them):
    ``--quick`` (a reduced but representative size set, seconds not minutes) and ``--out DIR``
    (write ``<DIR>/<name>.json`` with :func:`write_json`'s layout: ``{"meta": ..., "results": rows}``,
    each row holding its medians in ms and its ratio to the baseline measured in the same run)."""
    parser.add_argument("--quick", action="store_true", help="reduced size set (used by scripts/gpu_check.sh)")
    parser.add_argument("--out", default=None, help="directory for <name>.json / .csv results")
