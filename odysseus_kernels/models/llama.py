"""A small Llama-style decoder (RMSNorm, RoPE, GQA attention, SwiGLU MLP), the model every
parallel strategy is applied to and checked against.

The model runs on a shard of the sequence: ``forward(input_ids, positions)`` takes this rank's
tokens ``[B, S_local]`` and their global positions ``[S_local]`` (so RoPE is right for every
layout). The attention core and the projections are replaceable modules: ``apply_<strategy>``
functions in :mod:`odysseus_kernels.layers` swap them for parallel versions holding the same weights.
Unparallelised, it is the single-device reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.attention import attention_ref
from .shape import ModelShape


@dataclass(frozen=True)
class LlamaConfig(ModelShape):
    """The model's configuration: its :class:`~.shape.ModelShape` (``layers``, ``hidden``, ``heads``,
    ``kv_heads``, ``intermediate``, ``vocab_size``, ``head_dim``, ``linear_layers``,
    ``hybrid_ratio``, validated there) plus ``rope_theta``, ``norm_eps`` and ``mlp_chunk_size``
    (the blockwise MLP). Frozen: change fields with ``cfg.with_(...)``."""

    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    mlp_chunk_size: int | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half convention) of ``x [B, S, H, D]`` at global ``positions [S]``."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d))
    ang = positions.to(torch.float64).view(-1, 1) * inv.view(1, -1)  # [S, D/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype).view(1, -1, 1, d)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype).view(1, -1, 1, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class LocalSoftmaxAttention(nn.Module):
    """Causal softmax attention over the whole (local) sequence: the single-device core."""

    def forward(self, q, k, v, positions):
        return attention_ref(q, k, v, causal=True)


class LocalLinearAttention(nn.Module):
    """Causal linear attention (no normaliser, LASP-2's form) over the whole local sequence."""

    def forward(self, q, k, v, positions):
        from ..kernels.linear_attention import linear_attention_ref

        return linear_attention_ref(q, k, v, causal=True)


class Attention(nn.Module):
    """GQA attention block: q/k/v/o projections, RoPE, and a replaceable ``core``."""

    def __init__(self, cfg: LlamaConfig, linear: bool = False):
        super().__init__()
        self.cfg = cfg
        self.linear = linear
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, cfg.heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.heads * hd, cfg.hidden, bias=False)
        self.core = LocalLinearAttention() if linear else LocalSoftmaxAttention()

    def forward(self, x, positions):
        b, s, _ = x.shape
        hd = self.cfg.head_dim
        # explicit head counts (not -1): an empty batch or sequence has no elements to infer them from
        q, k, v = (t.view(b, s, t.shape[-1] // hd, hd) for t in (self.q_proj(x), self.k_proj(x), self.v_proj(x)))
        if not self.linear:
            q = rope(q, positions, self.cfg.rope_theta)
            k = rope(k, positions, self.cfg.rope_theta)
        else:  # linear attention has no softmax to bound it: normalise q, k per head for stability
            q = F.normalize(q, dim=-1)
            k = F.normalize(k, dim=-1)
            # its states are per query head (K^T V decays per head): repeat the kv heads (GQA)
            rep = q.shape[2] // k.shape[2]
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        o = self.core(q, k, v, positions)
        return self.o_proj(o.reshape(b, s, o.shape[2] * o.shape[3]))


class MLP(nn.Module):
    """SwiGLU MLP. With ``chunk_size`` it runs blockwise over the sequence (the Blockwise Parallel
    Transformer / LWM memory mode): each block of ``chunk_size`` tokens is computed, and recomputed
    in backward, on its own, so the ``[B, S, intermediate]`` activations are never all alive and
    the MLP's saved activation memory no longer grows with the local sequence length."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)
        self.chunk_size = cfg.mlp_chunk_size

    def _dense(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def forward(self, x):
        if not self.chunk_size or x.shape[1] <= self.chunk_size:
            return self._dense(x)
        from torch.utils.checkpoint import checkpoint

        return torch.cat([checkpoint(self._dense, xc, use_reentrant=False)
                          for xc in x.split(self.chunk_size, dim=1)], dim=1)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, index: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg, linear=cfg.is_linear(index))
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, positions):
        x = x + self.attn(self.attn_norm(x), positions)
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm and LM head."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        for name, p in sorted(self.named_parameters()):
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``input_ids [B, S_local]``, ``positions [S_local]`` -> logits ``[B, S_local, vocab]``."""
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, positions)
        return self.lm_head(self.norm(x))


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over the local tokens (labels already shifted; -100 = ignore).

    Sum (not mean) so that shards add up: the global mean loss is the sum over ranks divided by the
    global number of labelled tokens.
    """
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum", ignore_index=-100)


def make_batch(cfg: LlamaConfig, batch: int, seq_len: int, seed: int = 0):
    """Deterministic random ``(input_ids [B, L], labels [B, L])`` (labels = the next token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g)
    labels = ids[:, 1:].clone()
    return ids[:, :-1].contiguous(), labels
