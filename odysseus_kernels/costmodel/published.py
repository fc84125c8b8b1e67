"""Other systems, described only as far as the validation needs them to reproduce published numbers.

A :class:`Published` is an :class:`~.impl.Impl` whose extra fields say where the system behind a
published result differs from our ops (``None``: as our op). Every formula here is THEIR volume or
cost; the volumes of this package's ops come from the ops' closed forms (:mod:`.strategies`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .impl import Impl


@dataclass(frozen=True)
class Published(Impl):
    """How a published system's ring / TokenRing / TP differ from ours.

    Args:
        name: the system.
        ring_dkv_bytes: bytes per element of the travelling dK/dV partials (``None``: ours, the fp32
            accumulator of ``ring_comm_bytes``).
        ring_dkv_hops: ``"n"``: the dK/dV buffer starts at its owner and travels the whole ring
            (ring-flash-attn); ``"n-1"``: ours (it starts at the first remote rank).
        merge_bytes_fwd / merge_bytes_bwd: HBM bytes per output element per ring step spent merging
            partial results outside the attention kernel (``None``: ours, see
            :func:`~.timing.merge_bytes`). ring-flash-attn's eager PyTorch update: 38 fwd
            (bf16->fp32 cast 6, ``out - block_out`` 12, sigmoid product 8, subtraction 12), 30 bwd
            (three fp32 accumulations).
        token_ring_out_bytes / token_ring_stats_bytes: wire format of TokenRing's partial output and
            of its lse / delta / dQ partial: ``"input"`` (the activation dtype) or a byte count
            (``None``: ours, ``token_ring_comm_bytes``).
        linear_ring_right_product: linear-attention layers under ``ring`` (the LASP-2 paper's
            baseline) compute each visiting K/V block as ``Q (K^T V)`` instead of ``(Q K^T) V``.
    """

    name: str = "published"
    ring_dkv_bytes: int | None = None
    ring_dkv_hops: str = "n-1"
    merge_bytes_fwd: float | None = None
    merge_bytes_bwd: float | None = None
    token_ring_out_bytes: int | str | None = None
    token_ring_stats_bytes: int | str | None = None
    linear_ring_right_product: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.ring_dkv_hops not in ("n-1", "n"):
            raise ValueError(f"Published.ring_dkv_hops: expected 'n-1' or 'n', got {self.ring_dkv_hops!r}")
        for f in ("token_ring_out_bytes", "token_ring_stats_bytes", "ring_dkv_bytes"):
            v = getattr(self, f)
            if v is not None and v != "input" and not (isinstance(v, int) and v > 0):
                raise ValueError(f"Published.{f}: expected None, 'input' or a positive byte count, got {v!r}")

    @property
    def changes_token_ring(self) -> bool:
        return self.token_ring_out_bytes is not None or self.token_ring_stats_bytes is not None

    @staticmethod
    def _wire(spec, b: int) -> int:
        return b if spec == "input" else int(spec)

    def ring_transfers(self, ours: dict, n: int, kv_elems: int) -> dict:
        """Their per-step ring transfers (``ours`` from :func:`~.strategies.ring_transfers`;
        ``kv_elems``: elements of one of K or V on a rank)."""
        if self.ring_dkv_bytes is None:
            return ours
        return {**ours, "dkv": 2 * kv_elems * self.ring_dkv_bytes,
                "dkv_hops": n if self.ring_dkv_hops == "n" else n - 1}

    def token_ring_wire(self, heads: int, head_dim: int, b: int, ours: dict) -> dict:
        """Their TokenRing bytes per query row (all heads): ``query`` out, ``result`` back, by phase."""
        if not self.changes_token_ring:
            return ours
        acc = 8 if b == 8 else 4
        out = acc if self.token_ring_out_bytes is None else self._wire(self.token_ring_out_bytes, b)
        st = acc if self.token_ring_stats_bytes is None else self._wire(self.token_ring_stats_bytes, b)
        h, d = heads, head_dim
        return {"forward": {"query": h * d * b, "result": h * (d * out + st)},
                "backward": {"query": h * (2 * d * b + 2 * st), "result": h * d * st}}


def published_value(impl, field: str, ours):
    """``impl.<field>`` when ``impl`` describes a published system that sets it, else ``ours``."""
    v = getattr(impl, field, None) if isinstance(impl, Published) else None
    return ours if v is None else v


PUBLISHED: dict[str, Published] = {
    # zhuzilin/ring-flash-attention: eager PyTorch out/lse merge, fp32 dk/dv buffers sent every step.
    "ring-flash-attn": Published(name="ring-flash-attn", ring_dkv_bytes=4, ring_dkv_hops="n", merge_bytes_fwd=38.0,
                                 merge_bytes_bwd=30.0),
    # the TokenRing authors' code (ACA-Lab-SJTU/token-ring, on ring-flash-attn's zigzag test): block_out
    # in the input dtype, lse fp32; its nsight trace shows steps of the block alone (~3.5 ms), so the
    # partial outputs are not merged on the per-step path.
    "tokenring-paper": Published(name="tokenring-paper", token_ring_out_bytes="input", token_ring_stats_bytes=4,
                                 merge_bytes_fwd=0.0, merge_bytes_bwd=30.0),
    # Megatron-LM sequence parallelism: input re-gathered in backward; Odysseus-Transformer's TP-SP.
    "megatron": Published(name="megatron", tp_save_gathered=False),
}

__all__ = ["PUBLISHED", "Published", "published_value"]
