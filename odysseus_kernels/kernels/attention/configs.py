"""Launch-config table of the attention Triton kernels (the compile-gate cases built from it: :mod:`.gate`).

One table, two readers: the dispatch in :mod:`.triton_attention` calls :func:`pick` for every launch,
and :func:`.gate.gate_cases` lists every entry :func:`pick` can return, with the exact signature and
constexprs the wrappers pass, for the ahead-of-time compile gate (:mod:`odysseus_kernels.kernels.aot`).

Key: ``(arch, kernel, dtype class, head-dim bucket)``. ``arch`` is the compute capability major*10
(90: Hopper, 80: Ampere; other CUDA GPUs use the nearest lower entry, at least 80) or ``"interpret"``
(``TRITON_INTERPRET=1`` on CPU: the Ampere entries, deterministic). ``dtype class`` is ``"16"``
(bf16/fp16) or ``"32"`` (fp32). The head-dim bucket is ``next_power_of_2(max(D, Dv, 16))`` (the padded
tile width). Mask flags (causal, windows, documents, span positions) change the code but not the
tiles: the gate compiles the mask-free and the heaviest mask variant of each entry, and at 16-bit head
dims 64 and 128 every combination of the flags.

Why these numbers (Triton 3.8 compiler and ptxas, no GPU): with ``num_warps=8, num_stages=2`` every
kernel fits the per-block shared memory of sm_90 (232,448 B) and sm_80 (166,912 B) with no register
spills at 16-bit head dims 64/128 (d128 on sm_90 took 64x32 tiles until a GPU measured 128x64 with 8
warps 2-2.6x faster, also spill-free now; sm_80 needs a few smaller tiles, :data:`_ARCH_OVERRIDES`). d256 keeps 64-row
tiles so that sm_90 still uses wgmma, and spills 0.1-1.4 KB. The dK/dV kernel at the former
``num_warps=4`` and Triton's default 3 stages needed 247,808 B at bf16 d128. fp32 tiles are smaller
(twice the bytes per element), and fp32 ``tl.dot`` runs in IEEE fp32 (``input_precision="ieee"``):
fp32 results are exact fp32, not TF32 (and slow: CUDA-core dots, register spills; fp32 is for
exactness). These are first choices that pass the gate, tuned on a GPU only where
:data:`_ARCH_OVERRIDES` says so (sm_90, 16-bit, head dim 128); ``benchmarks/attention_tune.py`` measures
the rest, and :func:`load_overrides` loads a file of configs measured on your GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KERNELS = ("fwd", "bwd_preprocess", "bwd_dq", "bwd_dkdv")
HEAD_DIM_BUCKETS = (16, 32, 64, 128, 256)
ARCHS = (90, 80)
SHARED_LIMIT = {90: 232_448, 80: 166_912}


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int   # query rows per tile (per program in fwd / dQ; per inner step in dK/dV)
    block_n: int   # key rows per tile (per inner step in fwd / dQ; per program in dK/dV)
    num_warps: int
    num_stages: int


# (dtype class, head-dim bucket) -> {kernel: (BLOCK_M, BLOCK_N, num_warps, num_stages)}; the same on
# sm_90 and sm_80 (checked against both limits). Taller tiles at d128 (128x64) spill registers once the
# in-kernel merge / accumulation is there, 64x32 with 8 warps does not.
_TILES = {
    ("16", 16): dict(fwd=(128, 64, 8, 2), bwd_dq=(128, 64, 8, 2), bwd_dkdv=(64, 64, 8, 2)),
    ("16", 32): dict(fwd=(128, 64, 8, 2), bwd_dq=(128, 64, 8, 2), bwd_dkdv=(64, 64, 8, 2)),
    ("16", 64): dict(fwd=(128, 64, 8, 2), bwd_dq=(128, 64, 8, 2), bwd_dkdv=(64, 64, 8, 2)),
    ("16", 128): dict(fwd=(64, 32, 8, 2), bwd_dq=(64, 32, 8, 2), bwd_dkdv=(64, 32, 8, 2)),
    ("16", 256): dict(fwd=(64, 32, 8, 2), bwd_dq=(64, 32, 8, 2), bwd_dkdv=(64, 32, 8, 2)),
    ("32", 16): dict(fwd=(64, 32, 8, 2), bwd_dq=(64, 32, 8, 2), bwd_dkdv=(64, 32, 8, 2)),
    ("32", 32): dict(fwd=(64, 32, 8, 2), bwd_dq=(64, 32, 8, 2), bwd_dkdv=(64, 32, 8, 2)),
    ("32", 64): dict(fwd=(64, 32, 8, 2), bwd_dq=(64, 32, 8, 2), bwd_dkdv=(64, 32, 8, 2)),
    ("32", 128): dict(fwd=(32, 32, 8, 2), bwd_dq=(32, 32, 8, 2), bwd_dkdv=(32, 32, 8, 2)),
    ("32", 256): dict(fwd=(32, 16, 8, 2), bwd_dq=(32, 16, 8, 2), bwd_dkdv=(32, 16, 8, 2)),
}


# (arch, kernel, dtype class, bucket) entries that differ from _TILES: on sm_80 (no wgmma, mma.sync
# accumulators in registers) the _TILES dK/dV choices spill with documents/span positions on (d64:
# 712 B, d128: 16 B); these do not. The sm_80 forward uses _TILES: compiled in every mask-flag
# combination, the former overrides spilled 4-16 B with span positions but no documents (a zigzag ring)
# and _TILES does not (Triton 3.8 and 3.6).
# On sm_90 at 16-bit head dim 128: the fastest of the candidates measured on an H200 that spill no
# registers in any mask variant under Triton 3.6 and 3.8 (benchmarks/attention_tune.py, 2026-12-04,
# Triton 3.6, bf16, batch 4 x seq 8192 x 16 heads, causal + non-causal time; every candidate correct on an
# odd length against float64; benchmarks/results/2026-12-04b-nvidia-h200): all three kernels 128x64 with
# 8 warps, 2 stages. Against the former 64x32 tiles: forward 2.0x (7.0 / 3.7 ms non-causal / causal, vs
# 13.9 / 7.1), dQ 2.0x, dK/dV 2.6x. Faster but spilling (so failing the gate): forward 128x128 (2.2x,
# 64-172 B spilled), dK/dV 64x64 with 4 warps (3.2x, up to 360 B). Other head dims and sm_80: not measured.
_ARCH_OVERRIDES = {
    (80, "bwd_dkdv", "16", 64): (64, 32, 8, 2),
    (80, "bwd_dkdv", "16", 128): (32, 32, 8, 2),
    (90, "fwd", "16", 128): (128, 64, 8, 2),
    (90, "bwd_dq", "16", 128): (128, 64, 8, 2),
    (90, "bwd_dkdv", "16", 128): (128, 64, 8, 2),
}


def _table() -> dict:
    t = {}
    for arch in ARCHS:
        for (dc, bucket), kernels in _TILES.items():
            for kernel, cfg in kernels.items():
                t[(arch, kernel, dc, bucket)] = LaunchConfig(*_ARCH_OVERRIDES.get((arch, kernel, dc, bucket), cfg))
            # rows of out and dout in registers: fewer rows for wider heads
            t[(arch, "bwd_preprocess", dc, bucket)] = LaunchConfig(max(8, 2048 // bucket), 16, 4, 1)
    return t


TABLE = _table()

OVERRIDES_ENV = "ODYSSEUS_ATTENTION_CONFIGS"


def _pow2(x, lo, hi) -> bool:
    return isinstance(x, int) and lo <= x <= hi and x & (x - 1) == 0


def load_overrides(path: str) -> dict:
    """Replace table entries with the launch configs in the JSON file ``path``, e.g. the ones
    ``benchmarks/attention_tune.py --write-configs`` measured fastest on your GPU:
    ``{"attention_configs": [{"arch": 90, "kernel": "fwd", "dtype": "16", "head_dim": 128, "cfg": [BM, BN,
    num_warps, num_stages]}, ...]}``. Every entry is checked first (a bad file raises ``ValueError`` and
    changes nothing). Returns the entries it set. Set ``ODYSSEUS_ATTENTION_CONFIGS=path`` to load one at
    import. The compile gate checks the shipped table, not these: a config from a file is compiled
    first when it is launched."""
    import json

    with open(path) as f:
        doc = json.load(f)
    entries = doc.get("attention_configs") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{\"attention_configs\": [...]}}")
    new = {}
    for e in entries:
        try:
            key = (int(e["arch"]), str(e["kernel"]), str(e["dtype"]), int(e["head_dim"]))
            cfg = tuple(e["cfg"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: bad entry {e!r}") from err
        arch, kernel, dc, hd = key
        good = (arch in ARCHS and kernel in KERNELS and dc in ("16", "32") and hd in HEAD_DIM_BUCKETS and len(cfg) == 4
                and _pow2(cfg[0], 8, 256) and _pow2(cfg[1], 16, 256) and _pow2(cfg[2], 1, 16)
                and isinstance(cfg[3], int) and 1 <= cfg[3] <= 8)
        if not good:
            raise ValueError(f"{path}: bad entry {e!r}: arch in {ARCHS}, kernel in {KERNELS}, dtype '16' or '32', "
                             f"head_dim in {HEAD_DIM_BUCKETS}, cfg [BM, BN, num_warps, num_stages] (powers of two, "
                             "BM 8-256, BN 16-256, warps 1-16; stages 1-8)")
        new[key] = LaunchConfig(*cfg)
    TABLE.update(new)
    return new


def _load_env_overrides() -> None:
    import os

    path = os.environ.get(OVERRIDES_ENV)
    if path:
        load_overrides(path)


_load_env_overrides()


def dtype_class(dtype) -> str:
    if dtype in (torch.float16, torch.bfloat16, "bf16", "fp16"):
        return "16"
    if dtype in (torch.float32, "fp32"):
        return "32"
    raise TypeError(f"attention Triton kernels take fp16/bf16/fp32, got {dtype}")


def head_dim_bucket(head_dim: int) -> int:
    b = 16
    while b < head_dim:
        b *= 2
    if b > 256:
        raise ValueError(f"attention Triton kernels support head dims up to 256, got {head_dim}")
    return b


def current_arch(device=None):
    """``"interpret"`` under ``TRITON_INTERPRET=1`` (or without CUDA), else the table arch of the GPU."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return "interpret"
    major, minor = torch.cuda.get_device_capability(device)
    cc = major * 10 + minor
    return 90 if cc >= 90 else 80


def pick(arch, kernel: str, dtype, head_dim: int) -> LaunchConfig:
    """The launch config of ``kernel`` (one of :data:`KERNELS`) for ``arch`` (90, 80, ``"interpret"``),
    input ``dtype`` and head dim (``max(D, Dv)``). Deterministic: a pure table lookup."""
    a = 80 if arch == "interpret" else arch
    return TABLE[(a, kernel, dtype_class(dtype), head_dim_bucket(head_dim))]
