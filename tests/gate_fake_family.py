"""A tiny kernel family for the compile gate's own tests (tests/test_compile_gate.py): one tile
matmul kernel and a launch-config table with a config that fits and one that deliberately needs more
shared memory than any GPU has (16 pipeline stages of 64x64 fp16 tiles: 256 KiB on sm_90, 240 KiB on sm_80)."""
import triton
import triton.language as tl

from odysseus_kernels.kernels.aot import GateCase


@triton.jit
def _fake_matmul_kernel(A, B, C, K, stride_am, stride_bk, stride_cm,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(A + rm[:, None] * stride_am + (k + rk)[None, :])
        b = tl.load(B + (k + rk)[:, None] * stride_bk + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(C + rm[:, None] * stride_cm + rn[None, :], acc.to(C.dtype.element_ty))


def _sig(dtype):
    return {"A": f"*{dtype}", "B": f"*{dtype}", "C": f"*{dtype}", "K": "i32", "stride_am": "i32",
            "stride_bk": "i32", "stride_cm": "i32", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
            "BLOCK_K": "constexpr"}


TILE = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)
ALIGNED = ("A", "B", "C", "K", "stride_am", "stride_bk", "stride_cm")


def good_cases():
    return [GateCase("fake._fake_matmul_kernel", _fake_matmul_kernel, _sig("fp16"), TILE, num_warps=4,
                     num_stages=2, dtype="fp16", head_dim=64, aligned=ALIGNED)]


def over_shared_cases():
    return [GateCase("fake._fake_matmul_kernel", _fake_matmul_kernel, _sig("fp16"), TILE, num_warps=4,
                     num_stages=16, dtype="fp16", head_dim=64, aligned=ALIGNED, tags={"deliberately": "over"})]


def gate_cases():
    return good_cases() + over_shared_cases()
