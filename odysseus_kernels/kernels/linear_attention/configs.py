"""Launch-config table of the linear-attention kernels (:mod:`.triton_chunk`): the dispatch picks from
it (:func:`pick`) and the ahead-of-time compile gate compiles exactly it (:func:`.gate.gate_cases`).

One :class:`LaunchConfig` per (arch, input dtype): chunk ``BT``, state tiles ``BK x BV``, the scan's
slice ``BS``, and ``num_warps``/``num_stages`` per kernel. ``H``, ``DK``, ``DV`` and the length are
runtime arguments of the kernels, so one config (and one compiled kernel per decay mode and
direction) serves every head count and head dim; head dims are covered by tiles of 64 lanes (masked
past the head dim: a head dim of 16-64 is one tile, 128 two, 256 four). Tiles of 64 rows make every
16-bit ``tl.dot`` an ``M >= 64`` matmul, which Triton lowers to ``wgmma`` on sm_90 (4 warps = one
warpgroup) and to ``mma.sync`` on sm_80. fp32 runs with ``input_precision="ieee"`` (exact fp32; no
tensor cores): one pipeline stage less, to keep its fp32 operand tiles within shared memory.

Arch: compute capability major 9 and newer use the sm_90 row, 8 the sm_80 row (sm_86/sm_89 have less
shared memory per block than sm_80, 101,376 B; the configs use well under that, see the gate's
table). On CPU (``TRITON_INTERPRET=1``) :func:`pick` returns :data:`INTERPRET`: 16-row chunks and
32-lane tiles, so the tests walk several chunks, K/V tiles and scan slices at small sizes (the
interpreter's cost grows with the number of programs); pass
``arch=90``/``80`` to run a GPU row under the interpreter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


KERNELS = ("local", "scan", "out")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
DECAYS = {"none": (False, False), "g_gamma": (False, True), "g": (True, False)}
GATE_HEAD_DIMS = (64, 128, 256)


@dataclass(frozen=True)
class LaunchConfig:
    """Tiles and launch options of one (arch, dtype) row."""

    bt: int
    bk: int
    bv: int
    bs: int
    num_warps: dict = field(default_factory=dict)
    num_stages: dict = field(default_factory=dict)

    def warps(self, kernel: str) -> int:
        return self.num_warps[kernel]

    def stages(self, kernel: str) -> int:
        return self.num_stages[kernel]

    def constexprs(self, kernel: str) -> dict:
        if kernel == "scan":
            return {"BT": self.bt, "BS": self.bs}
        return {"BT": self.bt, "BK": self.bk, "BV": self.bv}


def _row(stages: int, warps: dict, bs: int = 128) -> LaunchConfig:
    return LaunchConfig(bt=64, bk=64, bv=64, bs=bs, num_warps={"scan": 4, **warps},
                        num_stages={"local": stages, "scan": 1, "out": stages})


# 16-bit: one warpgroup for the state and output kernels (the output kernel also computes dq, dk
# and dv). fp32 (ieee, FMA products) holds its operands in registers: 8 warps everywhere.
_W16 = {"local": 4, "out": 4}
_W32 = {"local": 8, "out": 8}
TABLE: dict[tuple[int, str], LaunchConfig] = {
    (90, "bf16"): _row(2, _W16),
    (90, "fp16"): _row(2, _W16),
    (90, "fp32"): _row(1, _W32),
    (80, "bf16"): _row(2, _W16),
    (80, "fp16"): _row(2, _W16),
    (80, "fp32"): _row(1, _W32),
}

INTERPRET = LaunchConfig(bt=16, bk=32, bv=32, bs=256, num_warps=dict.fromkeys(KERNELS, 4),
                         num_stages=dict.fromkeys(KERNELS, 1))


def arch_of(device: torch.device) -> int | None:
    """The table's arch for a device: 90 (compute capability >= 9), 80 (8.x), ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        raise RuntimeError(f"linear-attention Triton kernels need compute capability >= 8.0, got {major}.x")
    return 90 if major >= 9 else 80


def pick(arch: int | None, dtype: torch.dtype, head_dim: int) -> LaunchConfig:
    """The launch config for ``arch`` (90, 80; ``None``: CPU/interpreter), an input dtype and head dim.

    Deterministic: the same answer on every call, so what the gate compiled is what runs.
    """
    if dtype not in TRITON_TYPES:
        raise TypeError(f"Triton linear-attention kernels take {tuple(TRITON_TYPES)}, got {dtype}")
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    if arch is None:
        return INTERPRET
    return TABLE[(90 if arch >= 90 else 80, TRITON_TYPES[dtype])]
