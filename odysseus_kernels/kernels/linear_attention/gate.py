"""The LASP-2 family's compile-gate cases (:func:`gate_cases`, read by :mod:`odysseus_kernels.kernels.aot`):
every (kernel, config) :func:`.configs.pick` can return, with the exact signature. Kept apart from the
table (:mod:`.configs`)."""
from __future__ import annotations

import dataclasses

from ..aot import GateCase
from . import triton_chunk as tc
from .configs import DECAYS, DTYPES, GATE_HEAD_DIMS, KERNELS, pick


def _signature(kernel: str, dt: str) -> dict:
    p, f32 = f"*{dt}", "*fp32"
    if kernel == "local":
        ptrs = {"X": p, "Y": p, "L": f32}
    elif kernel == "scan":
        ptrs = {"L": f32, "HT": f32}
    else:
        ptrs = {"X": p, "Y": p, "Z": p, "Hs": f32, "O": f32}
    ints = ("C", "NT", "H", "DKV") if kernel == "scan" else ("C", "NT", "H", "DK", "DV")
    return {**ptrs, "GC": f32, "GAMMA": f32, **dict.fromkeys(ints, "i32")}


def _variants(kernel: str) -> list[dict]:
    """The direction constexprs the dispatch launches a kernel with: ``local``/``scan`` forward
    (states) and reversed (state gradients); ``out`` forward (output), forward over ``h^T`` (dq),
    reversed (dv) and reversed over ``dh^T`` (dk)."""
    if kernel == "out":
        return [{"REVERSE": rev, "TRANS_H": trans} for rev in (False, True) for trans in (False, True)]
    return [{"REVERSE": rev} for rev in (False, True)]


def gate_cases() -> list[GateCase]:
    """Every (kernel, config) the dispatch can launch on sm_90 and sm_80: 3 kernels (in both directions;
    the output kernel also over transposed states) x 3 decay modes x bf16/fp16/fp32 x head dims
    64/128/256, with the exact signature and constexprs :mod:`.triton_chunk` passes. The scan never
    touches the inputs (fp32 states only): it is listed once per arch with ``dtype="fp32"``. Head dims
    are runtime arguments, so the cases of different head dims compile the same kernel (listed per
    head dim as the contract asks)."""
    cases = []
    for arch in (90, 80):
        for dt in ("bf16", "fp16", "fp32"):
            cfg = pick(arch, DTYPES[dt], 128)
            for kernel in KERNELS:
                if kernel == "scan" and dt != "fp32":
                    continue
                for decay, (use_g, use_gamma) in DECAYS.items():
                    for flags in _variants(kernel):
                        cx = {**cfg.constexprs(kernel), "USE_G": use_g, "USE_G_GAMMA": use_gamma, **flags}
                        if kernel != "scan":
                            cx["IEEE"] = dt == "fp32"
                        sig = {**_signature(kernel, dt), **dict.fromkeys(cx, "constexpr")}
                        for d in GATE_HEAD_DIMS:
                            cases.append(_case(kernel,
                                kernel=f"linear_attention._chunk_{kernel}_kernel", fn=tc.KERNELS[kernel],
                                signature=sig, constexprs=cx, num_warps=cfg.warps(kernel),
                                num_stages=cfg.stages(kernel), dtype=dt, head_dim=d, archs=(arch,),
                                tags={"decay": decay, "reverse": flags["REVERSE"],
                                      "trans_h": flags.get("TRANS_H")}))
    return cases


def _case(short: str, **kw) -> GateCase:
    """A GateCase; with the optional fields of :class:`..aot.GateCase` where it has them: the scan has
    no ``tl.dot``; the integer arguments specialized as multiples of 16 at launch are the head dims
    (``DK``, ``DV``, ``DKV``: 64/128/256 are), besides every pointer (torch allocations)."""
    have = {f.name for f in dataclasses.fields(GateCase)}
    if "uses_dot" in have:
        kw["uses_dot"] = short != "scan"
    if "aligned" in have:
        ints = ("DKV",) if short == "scan" else ("DK", "DV")
        kw["aligned"] = tuple(a for a, t in kw["signature"].items() if t.startswith("*")) + ints
    return GateCase(**kw)
