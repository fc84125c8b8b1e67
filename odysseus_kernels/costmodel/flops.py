"""FLOPs and memory-bound traffic per rank: GEMMs, attention (causal balance per layout), linear
attention states, and the elementwise work between kernels.

Conventions: a multiply-add is 2 FLOPs; attention of one (query, key) pair costs ``4 * d_h`` FLOPs
per head in forward (``QK^T`` and ``PV``) and 2.5x that in backward (FlashAttention recomputes ``P``:
5 matmuls against 2); GEMM backward is 2x forward (dX and dW); linear attention backward is 2x.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig

LINEAR_CHUNK = 64  # tokens per intra-chunk block of the chunked linear-attention kernels
ATTN_BWD_FACTOR = 2.5
GEMM_BWD_FACTOR = 2.0
LINEAR_BWD_FACTOR = 2.0


def causal_pairs(strategy: str, seq_len: int, n: int, causal: bool = True) -> float:
    """(query, key) pairs the busiest rank computes for one head and one sequence.

    Contiguous layouts (``ring``, ``allgather_kv``, ``lasp2h``'s softmax layers) leave rank N-1 with
    ``(N - 1/2) C^2`` pairs; balanced ones (zigzag, TokenRing, USP, Ulysses, TP-SP) give every rank
    ``L^2 / (2N)``; RSA computes full score rows (``C L``) whatever the mask.

    Example::

        >>> causal_pairs("ring", 8, 4), causal_pairs("zigzag", 8, 4)
        (14.0, 8.0)
    """
    c = seq_len / n
    if strategy == "rsa" or not causal:
        return c * seq_len
    if strategy in ("ring", "allgather_kv", "lasp2h"):
        return (n - 0.5) * c * c
    return seq_len * seq_len / (2 * n)


def gemm_flops_fwd(model: ModelConfig, kind: str, tokens: float) -> float:
    """Projection + MLP GEMM FLOPs of one layer over ``tokens`` token rows (full weights). TP-split
    layers do the same per rank (all L tokens x 1/N of the weights)."""
    p = model.layer_params(kind)
    weights = sum(v for k, v in p.items() if not k.endswith("norm"))
    return 2.0 * tokens * weights


def attention_flops_fwd(model: ModelConfig, pairs: float, batch: int) -> float:
    """Softmax (or left-product linear) attention core FLOPs for ``pairs`` pairs per head."""
    return 4.0 * batch * model.heads * model.head_dim * pairs


def linear_attention_flops_fwd(model: ModelConfig, tokens: float, chunk: int = LINEAR_CHUNK) -> float:
    """Chunked causal linear attention over ``tokens`` rows, all heads: masked intra-chunk products
    (``2 * c * d_h`` per token per head) plus the state ``K^T V`` and the inter-chunk ``Q S``
    (``2 * d_h^2`` each)."""
    dh = model.head_dim
    return model.heads * tokens * (2.0 * chunk * dh + 4.0 * dh * dh)


def state_matmul_flops(model: ModelConfig, tokens: float) -> float:
    """One ``[C, d_h] x [d_h, d_h]`` product per head (``Q_t P_t``, ``K_t^T V_t``, ``V dM^T``, ...)."""
    return 2.0 * model.heads * tokens * model.head_dim ** 2


def elementwise_bytes_fwd(model: ModelConfig, kind: str, tokens: float, b: int, eager: bool) -> float:
    """HBM bytes of the memory-bound work of one layer's forward outside GEMM/attention kernels:
    two RMSNorms, RoPE, SwiGLU, two residual adds (and, eager, the attention output copy).

    Fused kernels read and write each element once (norm ``2b``, SwiGLU ``3b``, residual ``3b``,
    RoPE inside attention). The eager Hugging Face layer, counted op by op: RMSNorm ``28 + 4b``
    (fp32 upcast, pow, mean, scale, downcast, weight), RoPE ``9b`` per q/k element, SwiGLU ``5b``.
    Backward moves about twice the forward bytes.
    """
    d, dq, dkv, i = model.hidden, model.q_dim, model.kv_dim, model.intermediate
    if eager:
        rope = 9 * b * (dq + dkv) if kind == "softmax" else 0
        per = 2 * (28 + 4 * b) * d + rope + 5 * b * i + 6 * b * d + 2 * b * dq
    else:
        per = 2 * 2 * b * d + 3 * b * i + 6 * b * d
    if kind == "linear" and model.attn_out_gate:
        per += 3 * b * dq  # o * act(gate)
    return tokens * per


@dataclass
class LayerFlops:
    """FLOPs per rank of one layer (forward; backward via the factors above)."""

    gemm: float
    attn: float          # fused attention core (flash-class rate)
    linear: float        # chunked linear-attention kernels (linear rate)
    elementwise: float   # bytes, memory-bound

    @property
    def total_fwd(self) -> float:
        return self.gemm + self.attn + self.linear

    @property
    def total_bwd(self) -> float:
        return GEMM_BWD_FACTOR * self.gemm + ATTN_BWD_FACTOR * self.attn + LINEAR_BWD_FACTOR * self.linear


def layer_flops(strategy: str, model: ModelConfig, kind: str, seq_len: int, batch: int, n: int, b: int, *,
                causal: bool = True, eager: bool = False, right_product: bool = False) -> LayerFlops:
    """Per-rank FLOPs of one layer (busiest rank for imbalanced layouts), forward.

    Args:
        strategy, model, seq_len, batch: as in :func:`~.strategies.comm_volume`; kind: ``"softmax"``
            or ``"linear"``; n: SP degree; b: bytes per element (for the elementwise traffic);
        causal: causal mask; eager: Hugging Face-style eager layer; right_product: see below.

    Returns:
        :class:`LayerFlops` (GEMM, fused-attention and linear-attention FLOPs, elementwise bytes).

    Linear layers: LASP-1/2, Ulysses and TP-SP run chunked linear attention; ``ring`` runs each
    visiting K/V block in the standard-attention manner (left product, quadratic) unless
    ``right_product`` (then ``Q (K^T V)`` per block: N state products).
    """
    tokens = batch * seq_len / n
    gemm = gemm_flops_fwd(model, kind, tokens)
    ew = elementwise_bytes_fwd(model, kind, tokens, b, eager)
    if kind == "softmax":
        return LayerFlops(gemm, attention_flops_fwd(model, causal_pairs(strategy, seq_len, n, causal), batch), 0.0, ew)
    if strategy in ("ring", "zigzag"):
        if right_product:
            return LayerFlops(gemm, 0.0, 2 * n * state_matmul_flops(model, tokens), ew)
        return LayerFlops(gemm, attention_flops_fwd(model, causal_pairs(strategy, seq_len, n, causal), batch), 0.0, ew)
    return LayerFlops(gemm, 0.0, linear_attention_flops_fwd(model, tokens), ew)


def head_flops_fwd(model: ModelConfig, tokens: float) -> float:
    """LM-head GEMM FLOPs over ``tokens`` rows."""
    return 2.0 * tokens * model.hidden * model.vocab


def model_flops_per_step(model: ModelConfig, seq_len: int, batch: int, causal: bool = True) -> float:
    """Useful FLOPs of one training step of the whole (unsharded) model, for MFU: 3x forward of
    GEMMs, LM head and (causal) attention; linear layers counted with their chunked cost."""
    tokens = batch * seq_len
    total = 3 * head_flops_fwd(model, tokens)
    for kind in model.layer_kinds():
        total += 3 * gemm_flops_fwd(model, kind, tokens)
        if kind == "softmax":
            pairs = seq_len * seq_len / (2 if causal else 1)
            total += 3 * attention_flops_fwd(model, pairs, batch)
        else:
            total += 3 * linear_attention_flops_fwd(model, tokens)
    return total


__all__ = ["LayerFlops", "causal_pairs", "layer_flops", "gemm_flops_fwd", "attention_flops_fwd",
           "linear_attention_flops_fwd", "state_matmul_flops", "elementwise_bytes_fwd", "head_flops_fwd",
           "model_flops_per_step"]
