"""Shared benchmark harness: do_bench medians, run metadata, table printing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time


def bench(fn, *, warmup: int = 10, rep: int = 50) -> float:
    """Median milliseconds of ``fn()`` (``triton.testing.do_bench`` on CUDA, wall clock otherwise)."""
    import torch

    if torch.cuda.is_available():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    for _ in range(max(1, warmup // 5)):
        fn()
    times = []
    for _ in range(max(3, rep // 10)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def metadata() -> dict:
    """Device, versions, commit and date of this run."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
        "python": platform.python_version(), "commit": commit,
    }


def print_table(rows: list[dict], cols: list[str]) -> None:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(cols, widths)))


def write_json(out_dir: str | None, name: str, rows: list[dict], extra: dict | None = None) -> str | None:
    if not out_dir:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"meta": {**metadata(), **(extra or {})}, "results": rows}, f, indent=2)
    print(f"wrote {path}")
    return path
