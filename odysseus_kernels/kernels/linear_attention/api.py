"""Backend dispatch for the shard-local linear-attention pieces (see :mod:`.reference` for the math).

The four chunked steps, each with a torch and a Triton implementation of the same semantics:
:func:`chunk_fwd_h` (chunk states + the shard's state ``M``), :func:`chunk_fwd_o` (output),
:func:`chunk_bwd_dh` (state gradients + ``G``), :func:`chunk_bwd_dqkv` (input gradients); and the
two compositions :func:`intra_chunk_fwd` / :func:`intra_chunk_bwd` (single-device causal linear
attention). LASP-2 calls the steps separately so its AllGather runs between them.

Decay everywhere: ``g`` (``None`` or ``[B, C, H]`` per-token log-decays) and ``g_gamma`` (``None`` or
``[H]`` per-head constant log-decays), fla's names; see :mod:`.reference`.

Chunking: the torch backend uses ``block`` tokens per chunk; the Triton backend takes its chunk and
tiles from the launch-config table (:func:`.configs.pick`, by the device's arch and the dtype;
``config`` overrides it, e.g. to run a GPU row under the interpreter). Both give the same result up
to rounding.
"""
from __future__ import annotations

import torch

from ..backend import resolve_backend
from . import reference as ref

BACKENDS = ("auto", "torch", "triton")


def resolve(backend: str, q: torch.Tensor) -> str:
    """``auto``: Triton on CUDA tensors (fp16/bf16/fp32), torch otherwise (CPU, fp64)."""
    return resolve_backend(backend, q, BACKENDS)


def _triton():
    from . import triton_chunk

    return triton_chunk


def launch_config(q: torch.Tensor, config=None):
    """The Triton launch config for inputs like ``q`` (``config`` if given)."""
    from . import configs

    if config is not None:
        return config
    return configs.pick(configs.arch_of(q.device), q.dtype, q.shape[-1])


def chunk_fwd_h(k, v, *, g=None, g_gamma=None, block: int = 64, backend: str = "auto", config=None):
    """States entering every chunk, and the shard's final state.

    Args:
        k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``; g: ``None`` or ``[B, C, H]``; g_gamma: ``None`` or
            ``[H]`` (log-decays, <= 0).
        block: chunk size of the torch backend; config: Triton launch-config override.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    Returns:
        ``h [B, H, NT, Dk, Dv]`` (for :func:`chunk_fwd_o` / :func:`chunk_bwd_dqkv` with the same
        chunking and backend) and ``M [B, H, Dk, Dv]`` ``= sum_s exp(G_last - G_s) k_s^T v_s`` (fp32;
        fp64 for fp64 inputs on the torch backend).
    Example:
        >>> h, m = chunk_fwd_h(k, v, g_gamma=torch.full((H,), -0.05))
    """
    if resolve(backend, k) == "triton":
        return _triton().chunk_fwd_h_triton(k, v, g=g, g_gamma=g_gamma, cfg=launch_config(k, config))
    return ref.chunk_fwd_h_torch(k, v, g=g, g_gamma=g_gamma, bt=block)


def chunk_fwd_o(q, k, v, h, *, g=None, g_gamma=None, block: int = 64, backend: str = "auto", config=None,
                out_dtype=None):
    """Shard-local causal output ``o_i = exp(G_i) q_i h_u + sum_{s<=i in chunk} exp(G_i - G_s)
    (q_i . k_s) v_s``: ``[B, C, H, Dv]`` in ``out_dtype`` (default: the accumulator dtype, fp32/fp64)."""
    if resolve(backend, q) == "triton":
        o = _triton().chunk_fwd_o_triton(q, k, v, h, g=g, g_gamma=g_gamma, cfg=launch_config(q, config))
    else:
        o = ref.chunk_fwd_o_torch(q, k, v, h, g=g, g_gamma=g_gamma, bt=block)
    return o if out_dtype is None else o.to(out_dtype)


def chunk_bwd_dh(q, do, *, g=None, g_gamma=None, block: int = 64, backend: str = "auto", config=None):
    """State gradients ``dh [B, H, NT, Dk, Dv]`` (backwards in time) and ``G [B, H, Dk, Dv]`` ``=
    sum_i exp(G_i) q_i^T dO_i``, the gradient of a state entering the shard (fp32)."""
    if resolve(backend, q) == "triton":
        return _triton().chunk_bwd_dh_triton(q, do, g=g, g_gamma=g_gamma, cfg=launch_config(q, config))
    return ref.chunk_bwd_dh_torch(q, do, g=g, g_gamma=g_gamma, bt=block)


def chunk_bwd_dqkv(q, k, v, do, h, dh, *, g=None, g_gamma=None, block: int = 64, backend: str = "auto",
                   config=None, out_dtype=None):
    """Gradients of :func:`chunk_fwd_o` w.r.t. ``q, k, v`` (with ``h`` from :func:`chunk_fwd_h` and
    ``dh`` from :func:`chunk_bwd_dh`), in ``out_dtype`` (default: the accumulator dtype)."""
    if resolve(backend, q) == "triton":
        grads = _triton().chunk_bwd_dqkv_triton(q, k, v, do, h, dh, g=g, g_gamma=g_gamma,
                                                cfg=launch_config(q, config))
    else:
        grads = ref.chunk_bwd_dqkv_torch(q, k, v, do, h, dh, g=g, g_gamma=g_gamma, bt=block)
    return grads if out_dtype is None else tuple(t.to(out_dtype) for t in grads)


def intra_chunk_fwd(q, k, v, *, g=None, g_gamma=None, block: int = 64, backend: str = "auto", config=None,
                    out_dtype=None):
    """Causal (decayed) linear attention of one sequence/shard from a zero state.

    Args:
        q, k: ``[B, C, H, Dk]``; v: ``[B, C, H, Dv]``; g: ``None`` or ``[B, C, H]``; g_gamma: ``None``
            or ``[H]`` (log-decays, <= 0).
    Returns:
        ``[B, C, H, Dv]``: ``o_t = sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s`` in ``out_dtype``
        (default fp32, fp64 for fp64 inputs).
    Example:
        >>> o = intra_chunk_fwd(q, k, v, g_gamma=torch.full((H,), -0.05, device="cuda"))
    """
    kw = {"g": g, "g_gamma": g_gamma, "block": block, "backend": backend, "config": config}
    h, _ = chunk_fwd_h(k, v, **kw)
    return chunk_fwd_o(q, k, v, h, out_dtype=out_dtype, **kw)


def intra_chunk_bwd(q, k, v, do, *, g=None, g_gamma=None, block: int = 64, backend: str = "auto", config=None,
                    out_dtype=None):
    """Gradients of :func:`intra_chunk_fwd` w.r.t. ``q, k, v`` and, when given, ``g`` (``[B, C, H]``)
    and ``g_gamma`` (``[H]``): ``(dq, dk, dv, dg, dg_gamma)`` (``None`` for an absent decay; the chunk
    states are recomputed)."""
    kw = {"g": g, "g_gamma": g_gamma, "block": block, "backend": backend, "config": config}
    dh, _ = chunk_bwd_dh(q, do, **kw)
    h, _ = chunk_fwd_h(k, v, **kw)
    dq, dk, dv = chunk_bwd_dqkv(q, k, v, do, h, dh, **kw)
    dg = dgg = None
    if g is not None or g_gamma is not None:
        full = ref.decay_grad(q, dq, k, dk)
        dg = full if g is not None else None
        dgg = full.sum((0, 1)) if g_gamma is not None else None
    if out_dtype is not None:
        dq, dk, dv = (t.to(out_dtype) for t in (dq, dk, dv))
    return dq, dk, dv, dg, dgg
