"""The shape of a Llama-style decoder and its rules, defined once (no torch).

:class:`ModelShape` is the base of the model's :class:`~odysseus_kernels.models.LlamaConfig`
(which adds RoPE, norm and MLP-chunking settings) and of the cost model's
:class:`~odysseus_kernels.costmodel.ModelConfig` (which adds a name, an output gate and tied
embeddings); the playground builds a ``LlamaConfig`` from its run settings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .._util import layer_is_linear

LINEAR_LAYERS = ("none", "all", "hybrid")


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a Llama-style decoder (SwiGLU MLP, GQA attention).

    Args:
        layers, hidden, heads, kv_heads, intermediate, vocab_size: the usual sizes.
        head_dim: per-head size (default ``hidden // heads``, then ``hidden`` must divide by ``heads``).
        linear_layers: which layers use linear attention instead of softmax: ``"none"``, ``"all"``,
            or ``"hybrid"`` with ``hybrid_ratio`` linear layers per softmax layer (the LASP-2H
            layout: with ratio 3, layers 0-2 linear, 3 softmax, 4-6 linear, ...).

    Raises ``ValueError`` naming the field for sizes that are not positive ints, ``hidden`` not
    divisible by ``heads`` (without ``head_dim``), ``heads`` not divisible by ``kv_heads``, or an
    unknown ``linear_layers``.
    """

    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab_size: int = 256
    head_dim: int | None = None
    linear_layers: str = "none"
    hybrid_ratio: int = 3

    def __post_init__(self):
        name = type(self).__name__
        for f in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab_size", "hybrid_ratio"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}.{f}: expected a positive int, got {v!r}")
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ValueError(f"{name}: hidden ({self.hidden}) must be divisible by heads ({self.heads}) "
                                 "unless head_dim is given")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        elif not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"{name}.head_dim: expected a positive int, got {self.head_dim!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"{name}: heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        if self.linear_layers not in LINEAR_LAYERS:
            raise ValueError(f"{name}.linear_layers: expected 'none', 'all' or 'hybrid', got {self.linear_layers!r}")

    @property
    def q_dim(self) -> int:
        """``H * d_h``: width of q and of the attention output."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """``H_kv * d_h``: width of k and of v."""
        return self.kv_heads * self.head_dim

    def is_linear(self, layer: int) -> bool:
        """Whether ``layer`` uses linear attention."""
        return layer_is_linear(self.linear_layers, self.hybrid_ratio, layer)

    def layer_kinds(self) -> list[str]:
        """``"linear"`` or ``"softmax"`` per layer."""
        return ["linear" if self.is_linear(i) else "softmax" for i in range(self.layers)]

    def with_(self, **kw):
        """A copy with some fields changed (``head_dim`` is re-derived unless given)."""
        if "head_dim" not in kw and ("hidden" in kw or "heads" in kw):
            kw["head_dim"] = None
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["LINEAR_LAYERS", "ModelShape"]
