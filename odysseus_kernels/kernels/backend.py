"""Backend resolution shared by the kernel families (attention, linear attention), and the host-side
launch arithmetic of every kernel wrapper (:func:`cdiv`, :func:`next_pow2`: plain integer functions;
``triton.cdiv`` / ``triton.next_power_of_2`` are ``ConstexprFunction`` objects that cost ~6 us per
call on the host, several per launch)."""
from __future__ import annotations

import torch

# Dtypes the Triton kernels take; anything else (fp64, integer) falls back to torch under "auto".
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def resolve_backend(backend: str, q: torch.Tensor, backends: tuple[str, ...]) -> str:
    """The concrete backend for ``backend`` and inputs like ``q``.

    ``auto``: Triton on CUDA tensors (fp16/bf16/fp32), torch otherwise (CPU, fp64); any other name
    is returned as is when it is one of ``backends``.

    Args:
        backend: the requested name. q: a representative input. backends: the family's names
            (``"auto"`` first).
    Returns:
        str, one of ``backends`` other than ``"auto"``.
    Raises:
        ValueError: ``backend`` is not in ``backends``.
    Example:
        >>> resolve_backend("auto", torch.zeros(1), ("auto", "torch", "triton"))
        'torch'
    """
    if backend not in backends:
        raise ValueError(f"backend must be one of {backends}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda and q.dtype in TRITON_DTYPES else "torch"
    return backend


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints (grid sizes)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (0 for 0, like ``triton.next_power_of_2``): block sizes of
    head dims."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
