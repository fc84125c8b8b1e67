"""Calibrate a hardware profile from measured benchmark results (``benchmarks/results/*.json``).

Schema (``"schema": "odysseus-kernels/calibration/v1"``; other JSON files are skipped)::

    {
      "schema": "odysseus-kernels/calibration/v1",
      "device": "NVIDIA H100 80GB HBM3",      # torch.cuda.get_device_name()
      "profile": "h100-sxm",                  # optional: the preset it calibrates (else matched by device)
      "date": "2025-06-01", "commit": "abc1234", "versions": {"torch": "2.7.0"},
      "measurements": [
        {"kind": "gemm",        "dtype": "bf16", "tflops": 760.0, "shape": "8192^3"},
        {"kind": "attn_fwd",    "dtype": "bf16", "tflops": 455.0},
        {"kind": "attn_bwd",    "dtype": "bf16", "tflops": 380.0},
        {"kind": "linear_attn", "dtype": "bf16", "tflops": 210.0},
        {"kind": "hbm",         "gbps": 2950.0},
        {"kind": "intra_p2p",   "gbps": 350.0},  {"kind": "intra_busbw", "gbps": 340.0},
        {"kind": "inter_p2p",   "gbps": 44.0},   {"kind": "inter_busbw", "gbps": 43.0}
      ]
    }

Each kind present replaces the profile's value by the median of its measurements: compute kinds
set the achieved fraction of the dtype's peak (``tflops / peak``), bandwidth kinds the achieved
GB/s. Kinds that are absent keep the documented defaults.
"""
from __future__ import annotations

import glob
import json
import os
import statistics

from .config import dtype_class
from .hardware import HardwareProfile, load_hardware

SCHEMA = "odysseus-kernels/calibration/v1"
_FLOP_KINDS = {"gemm": "gemm_eff", "attn_fwd": "attn_fwd_eff", "attn_bwd": "attn_bwd_eff",
               "linear_attn": "linear_attn_eff"}
_BW_KINDS = {"hbm": "hbm_gbps", "intra_p2p": "intra_p2p_gbps", "intra_busbw": "intra_coll_busbw_gbps",
             "inter_p2p": "inter_p2p_gbps", "inter_busbw": "inter_coll_busbw_gbps"}


def profile_for_device(device: str) -> str | None:
    """The preset a CUDA device name belongs to (``None`` if unknown).

    Example::

        >>> profile_for_device("NVIDIA A100-SXM4-80GB"), profile_for_device("NVIDIA A10")
        ('a100-80gb-sxm', 'a10-pcie')
    """
    d = device.upper()
    if "H100" in d or "H800" in d:
        return "h100-sxm"
    if "A100" in d or "A800" in d:
        return "a100-80gb-sxm"
    if "A10" in d.replace("A100", ""):
        return "a10-pcie"
    return None


def _files(paths, report: list) -> list[str]:
    """The JSON files under ``paths``; a path that does not exist is reported, not an error."""
    if isinstance(paths, str):
        paths = [paths]
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(glob.glob(os.path.join(p, "*.json")))
        elif os.path.exists(p):
            out.append(p)
        else:
            report.append(f"skipped {p}: no such file or directory (run the benchmarks on a GPU to create it)")
    return out


def calibrate(hardware, paths="benchmarks/results") -> tuple[HardwareProfile, list[str]]:
    """Apply every matching calibration file under ``paths`` (files or directories) to ``hardware``.

    Returns ``(profile, report)``, the report saying which file set what and which were skipped.
    Missing paths, or paths without calibration data, leave the profile's documented defaults
    unchanged and say so in the report (the last line then starts with ``"no calibration data"``).

    Example::

        >>> hw, report = calibrate("h100", [])   # nothing to apply
        >>> hw.gemm_eff == load_hardware("h100").gemm_eff, report
        (True, ['no calibration data found: using the documented defaults of h100-sxm'])
    """
    hw = load_hardware(hardware)
    base = hw.name
    values: dict[str, list[float]] = {}
    report: list[str] = []
    files = _files(paths, report)
    for f in files:
        try:
            with open(f) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            report.append(f"skipped {f}: {e}")
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            report.append(f"skipped {f}: not a {SCHEMA} file")
            continue
        target = data.get("profile") or profile_for_device(str(data.get("device", "")))
        if target is None or load_hardware(target).name != base:
            report.append(f"skipped {f}: for {target or data.get('device')!r}, not {base!r}")
            continue
        for m in data.get("measurements", []):
            kind = m.get("kind")
            if kind in _FLOP_KINDS and "tflops" in m:
                peak = hw.peak_tflops.get(dtype_class(m.get("dtype", "bf16")))
                if peak:
                    values.setdefault(kind, []).append(min(1.0, float(m["tflops"]) / peak))
            elif kind in _BW_KINDS and "gbps" in m:
                values.setdefault(kind, []).append(float(m["gbps"]))
        report.append(f"used {f}")
    if not values:
        report.append(f"no calibration data found: using the documented defaults of {base}")
        return hw, report
    upd = {}
    for kind, vs in values.items():
        field = _FLOP_KINDS.get(kind) or _BW_KINDS[kind]
        upd[field] = statistics.median(vs)
        report.append(f"{field} = {upd[field]:.3g} (median of {len(vs)})")
    return (hw.with_overrides(**upd) if upd else hw), report


def write_calibration(path: str, device: str, measurements: list[dict], **meta) -> str:
    """Write a calibration file (for benchmark scripts)."""
    data = {"schema": SCHEMA, "device": device, **meta, "measurements": measurements}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    return path


__all__ = ["SCHEMA", "calibrate", "profile_for_device", "write_calibration"]
