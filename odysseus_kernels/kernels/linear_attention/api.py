"""Backend dispatch for the shard-local linear-attention pieces."""
from __future__ import annotations

import torch

from .reference import intra_chunk, intra_chunk_backward

BACKENDS = ("auto", "torch", "triton")


def resolve(backend: str, q: torch.Tensor) -> str:
    """``auto``: Triton on CUDA tensors (fp16/bf16/fp32), torch otherwise (CPU, fp64)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16, torch.float32) else "torch"
    return backend


def intra_chunk_fwd(q, k, v, *, log_decay=None, block: int = 64, backend: str = "auto") -> torch.Tensor:
    """The shard's own causal (decayed) part, ``[B, C, H, Dv]`` in the accumulator dtype."""
    if resolve(backend, q) == "triton":
        from .triton_chunk import intra_chunk_triton

        return intra_chunk_triton(q, k, v, log_decay=log_decay, block=block)
    return intra_chunk(q, k, v, log_decay=log_decay, block=block)


def intra_chunk_bwd(q, k, v, dout, *, log_decay=None, block: int = 64, backend: str = "auto"):
    """Gradients of :func:`intra_chunk_fwd` w.r.t. ``q, k, v``."""
    if resolve(backend, q) == "triton":
        from .triton_chunk import intra_chunk_backward_triton

        return intra_chunk_backward_triton(q, k, v, dout, log_decay=log_decay, block=block)
    return intra_chunk_backward(q, k, v, dout, log_decay=log_decay, block=block)
