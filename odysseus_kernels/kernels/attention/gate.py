"""The attention family's compile-gate cases (:func:`gate_cases`, read by :mod:`odysseus_kernels.kernels.aot`):
every (kernel, config) that :func:`.configs.pick` can return, with the wrappers' exact signatures.
Kept apart from the table (:mod:`.configs`) so that the table imports no kernel and the kernel
module's import of the table is the only edge between them."""
from __future__ import annotations

import itertools

from ..aot import SPILL_HEAD_DIMS, GateCase
from . import triton_attention as ta
from .configs import ARCHS, KERNELS, pick

_PTR = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def _signature(kernel: str, dtype: str) -> tuple[object, dict]:
    """The kernel function and its argument types as the wrappers launch it (inputs in ``dtype``;
    accumulators, lse and delta in fp32; positions and document ids int32)."""
    p, f32, i32 = _PTR[dtype], "*fp32", "*i32"
    fn = {"fwd": ta._fwd_kernel, "bwd_preprocess": ta._bwd_preprocess_kernel, "bwd_dq": ta._bwd_dq_kernel,
          "bwd_dkdv": ta._bwd_dkdv_kernel}[kernel]
    types = ta.ARG_TYPES[kernel](p, f32, i32)
    return fn, types


_STRIDE_NAMES = frozenset(
    "sqb sqs sqh skb sks skh svb svs svh sob sos soh slb slh sdb sds sdh sgb sgs sgh seb seh sgkb sgks sgkh "
    "sgvb sgvs sgvh".split())


def gate_cases():
    """Every (kernel, config) :func:`pick` can return for sm_90 and sm_80, at bf16/fp16/fp32 and head
    dims 32, 64, 96 (padded to 128), 128 and 256, each in the mask-free and the heaviest mask variant
    (causal + window + documents + span positions) with fp32 accumulators (the ring), and for 16-bit
    inputs the causal per-block variant that writes out / gradients in the input dtype (and the
    preprocess reading the output in the input dtype); at 16-bit head dims 64 and 128 (where spills fail
    the gate) every combination of the three mask flags, both with fp32 accumulators and with
    input-dtype outputs. The wrappers' exact signature and constexprs throughout."""
    cases = []
    for arch in ARCHS:
        for dtype in ("bf16", "fp16", "fp32"):
            for d in (32, 64, 96, 128, 256):
                for kernel in KERNELS:
                    cfg = pick(arch, kernel, dtype, d)
                    fn, types = _signature(kernel, dtype)
                    variants = ta.gate_constexprs(kernel, d, d, cfg, dtype)
                    if dtype != "fp32" and kernel == "bwd_preprocess":
                        # the ops' backward reads the output in the input dtype (the per-block API may pass fp32)
                        variants = variants + [("io=" + dtype, variants[0][1], ("O",))]
                    elif dtype != "fp32":
                        base = variants[0][1]
                        # the per-block API (local attention, Ulysses) writes out / grads in the input dtype
                        io = {"fwd": ("O",), "bwd_dq": ("DQ",), "bwd_dkdv": ("DK", "DV_")}[kernel]
                        if d in SPILL_HEAD_DIMS:  # where spills fail the gate: every mask-flag combination the ops launch
                            combos = [("+".join(f for f, on in zip(("causal", "docs", "pos"), flags) if on) or "none",
                                       dict(base, CAUSAL=flags[0], HAS_DOCS=flags[1], POS=flags[2]))
                                      for flags in itertools.product((False, True), repeat=3)]
                            variants = variants + [v for v in combos if v[0] not in ("none", "causal+docs+pos")]
                            variants = variants + [(tag + ",io=" + dtype, cx, io) for tag, cx in combos]
                        else:
                            variants = variants + [("causal,io=" + dtype, dict(base, CAUSAL=True), io)]
                    for tag, cx, *io in variants:
                        sig = {name: ("constexpr" if name in cx else types[name]) for name in fn.arg_names}
                        sig.update({name: _PTR[dtype] for name in (io[0] if io else ())})
                        # what the JIT specializes as divisible by 16 at launch: the pointers (torch
                        # allocations) and the strides of [B, S, H, D] tensors (multiples of D and H*D,
                        # multiples of 16 at every head dim listed; the last-dim stride is 1, implicit)
                        aligned = tuple(n for n, t in sig.items() if t.startswith("*") or n in _STRIDE_NAMES)
                        cases.append(GateCase(kernel=f"attention.{fn.fn.__name__ if hasattr(fn, 'fn') else fn.__name__}",
                                              fn=fn, signature=sig, constexprs=cx, num_warps=cfg.num_warps,
                                              num_stages=cfg.num_stages, dtype=dtype, head_dim=d, archs=(arch,),
                                              uses_dot=kernel != "bwd_preprocess", aligned=aligned,
                                              tags={"mask": tag, "block_m": cfg.block_m, "block_n": cfg.block_n}))
    return cases
