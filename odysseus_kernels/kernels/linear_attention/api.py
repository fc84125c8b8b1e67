"""Backend dispatch for the shard-local linear-attention pieces (see :mod:`.reference` for the math).

The four chunked steps, each with a torch and a Triton implementation of the same semantics:
:func:`chunk_fwd_h` (chunk states + the shard's state ``M``), :func:`chunk_fwd_o` (output),
:func:`chunk_bwd_dh` (state gradients + ``G``), :func:`chunk_bwd_dqkv` (input gradients); and the
two compositions :func:`intra_chunk_fwd` / :func:`intra_chunk_bwd` (single-device causal linear
attention). LASP-2 calls the steps separately so its AllGather runs between them.
"""
from __future__ import annotations

import torch

from . import reference as ref

BACKENDS = ("auto", "torch", "triton")


def resolve(backend: str, q: torch.Tensor) -> str:
    """``auto``: Triton on CUDA tensors (fp16/bf16/fp32), torch otherwise (CPU, fp64)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16, torch.float32) else "torch"
    return backend


def _triton():
    from . import triton_chunk

    return triton_chunk


def _bt(block: int, backend: str) -> int:
    """The chunk size actually used: ``block`` for torch, a power of two in [16, 64] for Triton."""
    return _triton().chunk_size(block) if backend == "triton" else block


def chunk_fwd_h(k, v, *, log_decay=None, block: int = 64, backend: str = "auto"):
    """States entering every chunk of ``block`` tokens, and the shard's final state.

    Args:
        k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``; log_decay: ``None`` or ``[H]`` (<= 0).
        block: chunk size (Triton rounds it to a power of two in [16, 64]).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    Returns:
        ``h [B, H, NT, Dk, Dv]`` (for :func:`chunk_fwd_o` / :func:`chunk_bwd_dqkv` with the same
        ``block`` and backend) and ``M [B, H, Dk, Dv]`` ``= sum_s lambda^(C-1-s) k_s^T v_s`` (fp32; fp64
        for fp64 inputs on the torch backend).
    Example:
        >>> h, m = chunk_fwd_h(k, v, log_decay=torch.full((H,), -0.05))
    """
    be = resolve(backend, k)
    if be == "triton":
        return _triton().chunk_fwd_h_triton(k, v, log_decay=log_decay, bt=_bt(block, be))
    return ref.chunk_fwd_h_torch(k, v, log_decay=log_decay, bt=block)


def chunk_fwd_o(q, k, v, h, *, log_decay=None, block: int = 64, backend: str = "auto", out_dtype=None):
    """Shard-local causal output ``o_i = lambda^(i+1) q_i h_u + sum_{s<=i in chunk} lambda^(i-s)
    (q_i . k_s) v_s``: ``[B, C, H, Dv]`` in ``out_dtype`` (default: the accumulator dtype, fp32/fp64)."""
    be = resolve(backend, q)
    if be == "triton":
        return _triton().chunk_fwd_o_triton(q, k, v, h, log_decay=log_decay, bt=_bt(block, be),
                                            out_dtype=out_dtype or torch.float32)
    o = ref.chunk_fwd_o_torch(q, k, v, h, log_decay=log_decay, bt=block)
    return o if out_dtype is None else o.to(out_dtype)


def chunk_bwd_dh(q, do, *, log_decay=None, block: int = 64, backend: str = "auto"):
    """State gradients ``dh [B, H, NT, Dk, Dv]`` (backwards in time) and ``G [B, H, Dk, Dv]`` ``=
    sum_i lambda^(i+1) q_i^T dO_i``, the gradient of a state entering the shard (fp32)."""
    be = resolve(backend, q)
    if be == "triton":
        return _triton().chunk_bwd_dh_triton(q, do, log_decay=log_decay, bt=_bt(block, be))
    return ref.chunk_bwd_dh_torch(q, do, log_decay=log_decay, bt=block)


def chunk_bwd_dqkv(q, k, v, do, h, dh, *, log_decay=None, block: int = 64, backend: str = "auto",
                   out_dtype=None):
    """Gradients of :func:`chunk_fwd_o` w.r.t. ``q, k, v`` (with ``h`` from :func:`chunk_fwd_h` and
    ``dh`` from :func:`chunk_bwd_dh`), in ``out_dtype`` (default: the accumulator dtype)."""
    be = resolve(backend, q)
    if be == "triton":
        return _triton().chunk_bwd_dqkv_triton(q, k, v, do, h, dh, log_decay=log_decay, bt=_bt(block, be),
                                               out_dtype=out_dtype or torch.float32)
    grads = ref.chunk_bwd_dqkv_torch(q, k, v, do, h, dh, log_decay=log_decay, bt=block)
    return grads if out_dtype is None else tuple(g.to(out_dtype) for g in grads)


def intra_chunk_fwd(q, k, v, *, log_decay=None, block: int = 64, backend: str = "auto", out_dtype=None):
    """Causal (decayed) linear attention of one sequence/shard from a zero state.

    Args:
        q, k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``; log_decay: ``None`` or ``[H]`` (<= 0).
    Returns:
        ``[B, C, H, Dv]``: ``o_t = sum_{s<=t} lambda^(t-s) (q_t . k_s) v_s`` in ``out_dtype``
        (default fp32, fp64 for fp64 inputs).
    Example:
        >>> o = intra_chunk_fwd(q, k, v, log_decay=torch.full((H,), -0.05, device="cuda"))
    """
    h, _ = chunk_fwd_h(k, v, log_decay=log_decay, block=block, backend=backend)
    return chunk_fwd_o(q, k, v, h, log_decay=log_decay, block=block, backend=backend, out_dtype=out_dtype)


def intra_chunk_bwd(q, k, v, do, *, log_decay=None, block: int = 64, backend: str = "auto", out_dtype=None):
    """Gradients of :func:`intra_chunk_fwd` w.r.t. ``q, k, v`` (the chunk states are recomputed)."""
    dh, _ = chunk_bwd_dh(q, do, log_decay=log_decay, block=block, backend=backend)
    h, _ = chunk_fwd_h(k, v, log_decay=log_decay, block=block, backend=backend)
    return chunk_bwd_dqkv(q, k, v, do, h, dh, log_decay=log_decay, block=block, backend=backend,
                          out_dtype=out_dtype)
