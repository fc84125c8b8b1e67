"""Launch configurations of the persistent GEMM (:mod:`.persistent`): one table, read by the dispatch
(:func:`pick`) and by the ahead-of-time compile gate (:func:`.gate.gate_cases`).

Rows: ``(arch, dtype) -> (large, small)``. ``large`` is the tile for big problems (sm_90 16-bit:
128x256x64, 8 warps, 3 stages, the shape Triton's Hopper matmul uses, wgmma); ``small`` when the
large tiles would fill less than half of the SMs (more, smaller tiles keep the SMs busy). fp32 runs
IEEE fp32 dots (exact like cuBLAS without TF32), no tensor cores. ``arch == 0`` is the interpreter:
16x16x16 tiles so the tests' small shapes walk several tiles in every direction.

Every config is compiled ahead of time for sm_90 and sm_80 by ``gate.gate_cases()`` in the three modes the
ops launch (plain, ``WAIT`` = AG-GEMM, ``SIGNAL`` = GEMM-RS) with and without bias.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..backend import cdiv


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


_H16 = (GemmConfig(128, 256, 64, 8, 8, 3), GemmConfig(128, 128, 64, 8, 8, 3))
_A16 = (GemmConfig(128, 128, 64, 8, 8, 3), GemmConfig(64, 128, 32, 8, 4, 4))
_F32 = (GemmConfig(64, 64, 32, 8, 4, 2), GemmConfig(32, 64, 32, 8, 4, 2))

TABLE: dict[tuple[int, str], tuple[GemmConfig, GemmConfig]] = {
    (90, "bf16"): _H16, (90, "fp16"): _H16, (90, "fp32"): _F32,
    (80, "bf16"): _A16, (80, "fp16"): _A16, (80, "fp32"): _F32,
}
# The N-major weight (``W^T`` in the backward): 128x256 tiles come close to the register limit there
# (spills under Triton 3.6), so sm_90 16-bit uses 128x128 for both; fp32 uses its small tile.
TABLE_N_MAJOR: dict[tuple[int, str], tuple[GemmConfig, GemmConfig]] = {
    **TABLE, (90, "bf16"): (_H16[1], _H16[1]), (90, "fp16"): (_H16[1], _H16[1]),
    (90, "fp32"): (_F32[1], _F32[1]), (80, "fp32"): (_F32[1], _F32[1]),  # 64x64 spills in the WAIT mode
}
INTERPRETER = GemmConfig(16, 16, 16, 2, 1, 1)
SMS = {90: 132, 80: 108}  # for the small/large choice only (deterministic without a GPU)
# The three kernel modes the ops launch: plain GEMM, AG-GEMM (waits), GEMM-RS (signals).
MODES = {"plain": dict(INDEXED=False, WAIT=False, SIGNAL=False),
         "wait": dict(INDEXED=True, WAIT=True, SIGNAL=False),
         "signal": dict(INDEXED=True, WAIT=False, SIGNAL=True)}


def pick(arch: int, dtype: str, m: int, n: int, k: int, w_layout: str = "k_major") -> GemmConfig:
    """The config for a ``[m, k] x [k, n]`` product on ``arch`` (90, 80; 0 = interpreter) with the
    weight ``w [n, k]`` K-major (``"k_major"``, nn.Linear's weight) or N-major (``"n_major"``)."""
    if arch == 0:
        return INTERPRETER
    table = TABLE if w_layout == "k_major" else TABLE_N_MAJOR
    large, small = table[(90 if arch >= 90 else 80, dtype)]
    tiles = cdiv(m, large.block_m) * cdiv(n, large.block_n)
    return large if tiles * 2 >= SMS[90 if arch >= 90 else 80] else small
