"""Backend dispatch for block attention (see the package docstring and reference.py for semantics)."""
from __future__ import annotations

import torch

from ..._extension_loader import use_extension
from ..backend import resolve_backend as _resolve

from . import cpu_flash
from .reference import attention_block_bwd_torch, attention_block_fwd_torch, merge_attention_torch

BACKENDS = ("auto", "torch", "triton", "flash_attn")


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """``auto``: Triton on CUDA tensors (fp16/bf16/fp32), torch otherwise (CPU, fp64)."""
    return _resolve(backend, q, BACKENDS)


def attention_block_fwd(q, k, v, *, softmax_scale=None, causal=False, q_offset=0, k_offset=0,
                        window=(-1, -1), cu_seqlens=None, out_dtype=None, out=None, lse=None, backend="auto"):
    """Attention of a block of queries against a block of keys, with its log-sum-exp.

    Args:
        q: ``[B, Sq, H, D]``; k: ``[B, Sk, H_kv, D]``; v: ``[B, Sk, H_kv, Dv]`` (``H % H_kv == 0``).
        softmax_scale: default ``1/sqrt(D)``.
        causal, q_offset, k_offset, window, cu_seqlens: the mask over global positions (reference.py).
        out_dtype: dtype of ``out`` (default ``q.dtype``; ring drivers ask for fp32).
        out, lse: running fp32 accumulators ``[B, Sq, H, Dv]`` / ``[B, H, Sq]`` (unit last strides; views
            are fine): the block is merged into them in place (online softmax; rows with no visible key
            keep their values) and they are returned. The Triton backend merges inside the kernel.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere) | ``"torch"`` (on CPU PyTorch's flash
            kernel where the mask allows, :mod:`.cpu_flash`; else the reference) | ``"triton"`` (also on
            CPU under ``TRITON_INTERPRET=1``) | ``"flash_attn"`` (if installed, for masks it expresses exactly).
    Returns:
        ``(out [B, Sq, H, Dv], lse [B, H, Sq] fp32)``; rows with no visible key: out 0, lse -inf.
    """
    be = resolve_backend(backend, q)
    if out is not None:
        if be == "triton":
            from .triton_attention import attention_block_fwd_triton

            return attention_block_fwd_triton(q, k, v, softmax_scale=softmax_scale, causal=causal, q_offset=q_offset,
                                              k_offset=k_offset, window=window, cu_seqlens=cu_seqlens, out=out, lse=lse)
        o, l_ = attention_block_fwd(q, k, v, softmax_scale=softmax_scale, causal=causal, q_offset=q_offset,
                                    k_offset=k_offset, window=window, cu_seqlens=cu_seqlens, out_dtype=out.dtype,
                                    backend=be)
        return merge_attention(out, lse, o, l_)
    if be == "flash_attn":
        from .flash_attn import attention_block_fwd_flash

        return attention_block_fwd_flash(q, k, v, softmax_scale=softmax_scale, causal=causal, q_offset=q_offset,
                                         k_offset=k_offset, window=window, cu_seqlens=cu_seqlens, out_dtype=out_dtype)
    if be == "triton":
        from .triton_attention import attention_block_fwd_triton

        return attention_block_fwd_triton(q, k, v, softmax_scale=softmax_scale, causal=causal, q_offset=q_offset,
                                          k_offset=k_offset, window=window, cu_seqlens=cu_seqlens, out_dtype=out_dtype)
    if cpu_flash.eligible(q, k, v, causal=causal, q_offset=q_offset, k_offset=k_offset, window=window,
                          cu_seqlens=cu_seqlens):
        return cpu_flash.fwd(q, k, v, softmax_scale=softmax_scale, causal=causal, out_dtype=out_dtype)
    return attention_block_fwd_torch(q, k, v, softmax_scale=softmax_scale, causal=causal, q_offset=q_offset,
                                     k_offset=k_offset, window=window, cu_seqlens=cu_seqlens, out_dtype=out_dtype)


def attention_block_bwd(dout, q, k, v, out, lse, *, softmax_scale=None, causal=False, q_offset=0,
                        k_offset=0, window=(-1, -1), cu_seqlens=None, delta=None, grad_dtype=None, dq=None, dk=None,
                        dv=None, backend="auto"):
    """Gradients of a block given the row's final ``out``/``lse`` (from all key blocks).

    Returns ``(dq, dk, dv)`` shaped like ``q, k, v`` in ``grad_dtype`` (default ``q.dtype``). With ``dq``,
    ``dk``, ``dv`` given (accumulators, views allowed), the block's gradients are added to them in place
    and they are returned (the Triton backend accumulates inside its kernels, in fp32).
    """
    be = resolve_backend(backend, q)
    if dq is not None:
        if be == "triton":
            from .triton_attention import attention_block_bwd_triton

            return attention_block_bwd_triton(dout, q, k, v, out, lse, softmax_scale=softmax_scale, causal=causal,
                                              q_offset=q_offset, k_offset=k_offset, window=window,
                                              cu_seqlens=cu_seqlens, delta=delta, dq=dq, dk=dk, dv=dv, accumulate=True)
        g = attention_block_bwd(dout, q, k, v, out, lse, softmax_scale=softmax_scale, causal=causal, q_offset=q_offset,
                                k_offset=k_offset, window=window, cu_seqlens=cu_seqlens, delta=delta,
                                grad_dtype=dq.dtype, backend=be)
        for acc, part in zip((dq, dk, dv), g):
            acc += part
        return dq, dk, dv
    if be == "flash_attn":
        from .flash_attn import attention_block_bwd_flash

        return attention_block_bwd_flash(dout, q, k, v, out, lse, softmax_scale=softmax_scale, causal=causal,
                                         q_offset=q_offset, k_offset=k_offset, window=window, cu_seqlens=cu_seqlens,
                                         delta=delta, grad_dtype=grad_dtype)
    if be == "triton":
        from .triton_attention import attention_block_bwd_triton

        return attention_block_bwd_triton(dout, q, k, v, out, lse, softmax_scale=softmax_scale, causal=causal,
                                          q_offset=q_offset, k_offset=k_offset, window=window, cu_seqlens=cu_seqlens,
                                          delta=delta, grad_dtype=grad_dtype)
    if out is not None and cpu_flash.eligible(q, k, v, causal=causal, q_offset=q_offset,
                                                                k_offset=k_offset, window=window, cu_seqlens=cu_seqlens):
        return cpu_flash.bwd(dout, q, k, v, out, lse, softmax_scale=softmax_scale, causal=causal, grad_dtype=grad_dtype)
    return attention_block_bwd_torch(dout, q, k, v, out, lse, softmax_scale=softmax_scale, causal=causal,
                                     q_offset=q_offset, k_offset=k_offset, window=window, cu_seqlens=cu_seqlens,
                                     delta=delta, grad_dtype=grad_dtype)


def merge_attention(out, lse, block_out, block_lse):
    """In-place online-softmax merge of ``(block_out, block_lse)`` into ``(out, lse)`` (fp32).

    ``out [B, S, H, D]``, ``lse [B, H, S]``; exact for rows with lse = -inf on either side.
    Uses the compiled extension's fused kernel when it is available (no autograd: call it where
    no gradient is needed, as the ring schedules do). Returns ``(out, lse)``.
    """
    if (out.dtype in (torch.float32, torch.float64) and lse.dtype == out.dtype and out.device.type in ("cpu", "cuda")
            and block_out.dtype in (out.dtype, torch.float16, torch.bfloat16) and use_extension(out.device)):
        from ..extension_ops import merge_attention_states_

        merge_attention_states_(out, lse, block_out, block_lse.to(lse.dtype))
        return out, lse
    return merge_attention_torch(out, lse, block_out, block_lse)
