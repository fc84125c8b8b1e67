"""The GEMM family's compile-gate cases (:func:`gate_cases`, read by :mod:`odysseus_kernels.kernels.aot`):
every (mode, bias, config) the dispatch can launch, with the exact signature. Kept apart from the table
(:mod:`.configs`), which imports no kernel."""
from __future__ import annotations

import dataclasses

from ..aot import GateCase
from .configs import MODES, TABLE, TABLE_N_MAJOR, GemmConfig
from .persistent import _gemm_kernel


def gate_cases() -> list:
    """Every (mode, bias, config) the dispatch can launch, for the compile gate."""
    can_align = "aligned" in {f.name for f in dataclasses.fields(GateCase)}
    cases = []
    for w_layout, table in (("k_major", TABLE), ("n_major", TABLE_N_MAJOR)):
        for (arch, dt), cfgs in table.items():
            for cfg in dict.fromkeys(cfgs):
                for mode, flags in MODES.items():
                    for bias in (False, True):
                        sig, cx, aligned = case_signature(dt, cfg, flags, w_layout, bias)
                        extra = {"aligned": aligned} if can_align else {}
                        if can_align:  # spills fail the gate for every 16-bit GEMM (the rule's head_dim
                            extra["check_spills"] = dt != "fp32"  # 64/128 criterion does not apply here)
                        cases.append(GateCase(kernel="gemm._gemm_kernel", fn=_gemm_kernel, signature=sig,
                                              constexprs=cx, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                              dtype=dt, head_dim=0, archs=(arch,),
                                              tags={"mode": mode, "w": w_layout, "bias": bias}, **extra))
    return cases


# The weight operand ``w [N, K]`` is either the nn.Linear weight (K contiguous: ``stride_wk == 1``) or
# the transpose of one (``W^T`` in the backward: ``stride_wn == 1``); ``a`` and ``c`` always have unit
# stride along their last dim (the wrapper guarantees it). Unit strides are what Triton's JIT
# specializes into constants, so the gate compiles exactly these variants.
W_LAYOUTS = ("k_major", "n_major")
_POINTERS = ("a_ptr", "w_ptr", "bias_ptr", "c_ptr", "a_rows", "c_rows", "piece_of", "flags", "counters", "expected",
             "errors")
_INTS = ("M", "N", "K", "stride_am", "stride_ak", "stride_wn", "stride_wk", "stride_cm", "stride_cn", "epoch",
         "spin_limit", "num_progs")


def case_signature(dt: str, cfg: GemmConfig, flags: dict, w_layout: str, bias: bool):
    """``(signature, constexprs, aligned)`` of one launch: the unit strides as constexprs; pointers and
    the row strides (multiples of 16 at the model dims the gate stands for) as 16-divisible."""
    sig = {name: (f"*{dt}" if name.endswith("_ptr") else "*i32") for name in _POINTERS}
    sig.update({name: "i32" for name in _INTS})
    unit = {"stride_ak": 1, "stride_cn": 1, ("stride_wk" if w_layout == "k_major" else "stride_wn"): 1}
    cx = dict(unit, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
              HAS_BIAS=bias, PRECISION="ieee" if dt == "fp32" else "tf32", STAGES=cfg.num_stages, **flags)
    sig.update({name: "constexpr" for name in cx})
    row_stride = "stride_wn" if w_layout == "k_major" else "stride_wk"
    # K % 16 (and N % 16 for an N-major weight): the edge masks are constant per vector
    aligned = _POINTERS + ("K", "N", "stride_am", "stride_cm", row_stride)
    return sig, cx, aligned
