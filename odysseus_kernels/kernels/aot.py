"""Ahead-of-time compilation of our Triton kernels for a GPU architecture, on a machine without one.

Every Triton kernel family keeps one launch-config table in its ``configs.py`` and exposes
``gate_cases() -> list[GateCase]``: every (kernel, config) the dispatch can pick, with the exact
signature and constexprs the wrapper passes. The compile gate (``tests/test_compile_gate.py``,
``python -m odysseus_kernels.kernels.aot``) compiles each case for sm_90 and sm_80 with Triton's own
compiler and bundled ptxas, and checks shared memory, registers, spills and wgmma.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GateCase:
    """One kernel at one launch configuration, as the dispatch would launch it.

    Attributes:
        kernel: ``"<family>.<kernel name>"``, e.g. ``"attention._fwd_kernel"``.
        fn: the ``@triton.jit`` function (the ``JITFunction``, not an ``Autotuner``: use ``.fn``).
        signature: every argument name -> Triton type (``"*bf16"``, ``"*fp32"``, ``"*i32"``, ``"i32"``,
            ``"i64"``, ``"fp32"``, or ``"constexpr"`` for the constexprs below).
        constexprs: constexpr argument name -> value (block sizes, flags, head dims).
        num_warps, num_stages: the launch options.
        dtype: the input dtype the case stands for (``"bf16"``, ``"fp16"``, ``"fp32"``).
        head_dim: the head dim the case stands for.
        archs: compute capabilities (``90``, ``80``) this case can be picked on.
        tags: anything else worth reporting (mask flags, GQA, ...).
    """

    kernel: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    dtype: str
    head_dim: int
    archs: tuple = (90, 80)
    tags: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        cx = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        return f"{self.kernel}[{self.dtype},d{self.head_dim},w{self.num_warps},s{self.num_stages},{cx}]"
