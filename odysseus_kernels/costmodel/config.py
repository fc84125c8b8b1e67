"""What the cost model is asked about: the model's shape, the world of GPUs, and the training set-up.

Pure data: the model's shape is :class:`~odysseus_kernels.models.ModelShape` (shared with the model
and the playground), extended here with what only the cost model needs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

from ..models.shape import ModelShape

_DTYPE_BYTES = {
    "float64": 8, "fp64": 8, "double": 8,
    "float32": 4, "fp32": 4, "float": 4, "tf32": 4,
    "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "float8": 1, "fp8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}
# the name used to look up a peak rate in a hardware profile
_DTYPE_CLASS = {2: "bf16", 4: "fp32", 8: "fp64", 1: "fp8"}


def dtype_bytes(dtype) -> int:
    """Bytes per element of ``dtype``: a name (``"bf16"``, ``"bfloat16"``, ``"float32"``, ...) or a
    ``torch.dtype`` (read through its string form, so torch is not imported here).

    Example::

        >>> dtype_bytes("bf16"), dtype_bytes("float32")
        (2, 4)
    """
    name = str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPE_BYTES)}, got {dtype!r}")
    return _DTYPE_BYTES[name]


def dtype_class(dtype) -> str:
    """The peak-rate class of ``dtype`` in a hardware profile (``"bf16"`` for bf16/fp16, ...)."""
    return _DTYPE_CLASS[dtype_bytes(dtype)]


@dataclass(frozen=True)
class ModelConfig(ModelShape):
    """Shape of a Llama-style decoder for the cost model: the model's
    :class:`~odysseus_kernels.models.ModelShape` (same fields, rules and validation as
    :class:`~odysseus_kernels.models.LlamaConfig`) plus what only the cost model needs.

    Args:
        layers, hidden, heads, kv_heads, intermediate, vocab_size, head_dim, linear_layers,
            hybrid_ratio: see :class:`~odysseus_kernels.models.ModelShape` (``vocab`` reads
            ``vocab_size``).
        name: a label (the preset's name).
        attn_out_gate: linear-attention layers carry an output gate projection (``d x d``), as
            Linear-Llama3 in the LASP-2 paper (Linear-MoE's ``o_gate_proj``).
        tie_embeddings: the LM head shares the embedding matrix.

    Example::

        >>> m = ModelConfig.preset("llama2-7b")
        >>> m.layers, m.hidden, round(m.params() / 1e9, 2)
        (32, 4096, 6.74)
    """

    name: str = "custom"
    attn_out_gate: bool = False
    tie_embeddings: bool = False

    @property
    def vocab(self) -> int:
        return self.vocab_size

    def layer_params(self, kind: str = "softmax") -> dict[str, int]:
        """Parameter count of one layer's weight tensors, by tensor (the names of the package's model)."""
        d, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        p = {"attn_norm": d, "q_proj": q * d, "k_proj": kv * d, "v_proj": kv * d, "o_proj": d * q,
             "mlp_norm": d, "gate_proj": i * d, "up_proj": i * d, "down_proj": d * i}
        if kind == "linear" and self.attn_out_gate:
            p["o_gate_proj"] = q * d
        return p

    def embedding_params(self) -> int:
        """Embedding + final norm + LM head parameters."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2) + self.hidden

    def params(self) -> int:
        """Total parameter count."""
        return sum(sum(self.layer_params(k).values()) for k in self.layer_kinds()) + self.embedding_params()

    @staticmethod
    def from_llama_config(cfg, name: str = "custom", **kw) -> "ModelConfig":
        """From any :class:`~odysseus_kernels.models.ModelShape` (a ``LlamaConfig``, ...): its shape
        fields, plus ``kw`` (``attn_out_gate``, ...)."""
        shape = {f.name: getattr(cfg, f.name) for f in fields(ModelShape)}
        return ModelConfig(name=name, **shape, **kw)

    @staticmethod
    def preset(name: str) -> "ModelConfig":
        """A named model (see :data:`MODEL_PRESETS`)."""
        key = name.lower()
        if key not in MODEL_PRESETS:
            raise ValueError(f"model: expected one of {', '.join(sorted(MODEL_PRESETS))}, got {name!r}")
        return MODEL_PRESETS[key]


# Published shapes. Linear-Llama3-1B: the LASP-2 paper's model (Llama-3.2-1B shape, 16 layers,
# d = 2048, 16 heads of 128, MLP 8192, Llama-3 vocabulary, basic linear attention with an output gate).
def _preset(name, layers, hidden, heads, kv_heads, intermediate, vocab_size, **kw) -> ModelConfig:
    return ModelConfig(name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                       intermediate=intermediate, vocab_size=vocab_size, **kw)


MODEL_PRESETS: dict[str, ModelConfig] = {
    "llama2-7b": _preset("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
    "llama3-1b": _preset("llama3-1b", 16, 2048, 32, 8, 8192, 128256, tie_embeddings=True),
    "linear-llama3-1b": _preset("linear-llama3-1b", 16, 2048, 16, 16, 8192, 128256, linear_layers="all",
                                attn_out_gate=True, tie_embeddings=True),
    "linear-llama3-1b-hybrid": _preset("linear-llama3-1b-hybrid", 16, 2048, 16, 16, 8192, 128256,
                                       linear_layers="hybrid", hybrid_ratio=3, attn_out_gate=True,
                                       tie_embeddings=True),
    "llama3-8b": _preset("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
    "llama3-70b": _preset("llama3-70b", 80, 8192, 64, 8, 28672, 128256),
}


@dataclass(frozen=True)
class World:
    """The GPUs: ``gpus`` in total, ``gpus_per_node`` per node (ranks are node-major: ranks
    ``[k * gpus_per_node, (k+1) * gpus_per_node)`` share node ``k``), and the sequence-parallel degree
    ``sp`` (default: all GPUs; the rest is data parallelism over replicas of the SP group).

    Example::

        >>> w = World(64, gpus_per_node=8)
        >>> w.sp, w.dp, w.nodes
        (64, 1, 8)
    """

    gpus: int
    gpus_per_node: int = 8
    sp: int | None = None

    def __post_init__(self):
        if not isinstance(self.gpus, int) or self.gpus < 1:
            raise ValueError(f"World.gpus: expected a positive int, got {self.gpus!r}")
        if self.gpus_per_node < 1:
            raise ValueError(f"World.gpus_per_node: expected a positive int, got {self.gpus_per_node!r}")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ValueError(f"World: gpus ({self.gpus}) must be a multiple of gpus_per_node ({self.gpus_per_node})")
        sp = self.gpus if self.sp is None else self.sp
        if sp < 1 or self.gpus % sp:
            raise ValueError(f"World.sp: expected a divisor of gpus ({self.gpus}), got {self.sp!r}")
        object.__setattr__(self, "sp", sp)

    @property
    def dp(self) -> int:
        return self.gpus // self.sp

    @property
    def nodes(self) -> int:
        return max(1, -(-self.gpus // self.gpus_per_node))

    def group(self, size: int, stride: int = 1) -> "GroupShape":
        """Placement of a group of ``size`` ranks taken every ``stride`` ranks (node-major ranks)."""
        return GroupShape.of(size, stride, self.gpus_per_node)


@dataclass(frozen=True)
class GroupShape:
    """How a process group sits on the nodes: ``size`` ranks, ``per_node`` of them on each node it
    touches, ``nodes`` nodes. A group with ``nodes > 1`` crosses the inter-node network."""

    size: int
    per_node: int
    nodes: int

    @staticmethod
    def of(size: int, stride: int, gpus_per_node: int) -> "GroupShape":
        span = (size - 1) * stride + 1  # consecutive ranks covered
        if span <= gpus_per_node:
            return GroupShape(size, size, 1)
        per_node = max(1, gpus_per_node // stride) if stride <= gpus_per_node else 1
        per_node = min(per_node, size)
        return GroupShape(size, per_node, -(-size // per_node))


@dataclass(frozen=True)
class TrainConfig:
    """Training set-up that changes memory and time, not communication of the attention ops.

    Args:
        optimizer: ``"adam"`` (mixed precision: fp32 master + two fp32 moments, 12 B/param),
            ``"sgd"`` (fp32 master, 4 B/param) or ``"none"`` (forward/backward only).
        shard_optimizer: optimizer states sharded over the SP x DP group (ZeRO-1) even where the
            weights are replicated.
        param_bytes / grad_bytes: bytes per element of the weights used in compute and of their
            gradients (default: the activation dtype).
        recompute: ``"none"`` or ``"full"`` (each layer saves only its input and recomputes its
            forward in backward).
        activations: ``"fused"`` (fused RMSNorm / SwiGLU / RoPE kernels) or ``"eager"`` (the
            Hugging Face-style eager layer: fp32 norm temporaries, separate SwiGLU tensors, a
            contiguous copy of the attention output). See :mod:`.memory`.
        logits_bytes: bytes per logit element alive at the loss (bf16 logits + fp32 upcast + fp32 grad = 10).
        allocator_overhead: fraction of the dynamic memory (activations, transients, logits) the
            PyTorch caching allocator reserves on top through fragmentation (a 5-15% rule of thumb
            for training loops; 0.10).
        overlap_grad_sync: gradient reductions of replicated weights overlap backward (DDP buckets).
        step_overhead_s: fixed per-step host/framework overhead (0: not modelled).
    """

    optimizer: str = "adam"
    shard_optimizer: bool = True
    param_bytes: int | None = None
    grad_bytes: int | None = None
    recompute: str = "none"
    activations: str = "fused"
    logits_bytes: int = 10
    allocator_overhead: float = 0.10
    overlap_grad_sync: bool = True
    step_overhead_s: float = 0.0

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd", "none"):
            raise ValueError(f"TrainConfig.optimizer: expected 'adam', 'sgd' or 'none', got {self.optimizer!r}")
        if self.recompute not in ("none", "full"):
            raise ValueError(f"TrainConfig.recompute: expected 'none' or 'full', got {self.recompute!r}")
        if self.activations not in ("fused", "eager"):
            raise ValueError(f"TrainConfig.activations: expected 'fused' or 'eager', got {self.activations!r}")

    @property
    def optimizer_bytes(self) -> int:
        return {"adam": 12, "sgd": 4, "none": 0}[self.optimizer]


_SUFFIX = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_tokens(text) -> int:
    """``"2M"`` -> 2097152, ``"16K"`` -> 16384, ``"24000"`` -> 24000 (K/M are binary, as in the papers'
    "2048K").

    Example::

        >>> parse_tokens("2M"), parse_tokens("64k"), parse_tokens(1000)
        (2097152, 65536, 1000)
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise ValueError(f"sequence length: expected a number with an optional K/M/G suffix, got {text!r}")
    v = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if v != int(v) or v < 1:
        raise ValueError(f"sequence length: expected a positive whole number of tokens, got {text!r}")
    return int(v)


__all__ = ["ModelConfig", "MODEL_PRESETS", "World", "GroupShape", "TrainConfig", "dtype_bytes", "dtype_class",
           "parse_tokens"]
