"""The choices our ops expose that change bytes on the wire: their own arguments, nothing else.

Every communication volume of this package's strategies comes from the ops' closed forms
(``ring_comm_bytes``, ``token_ring_comm_bytes``, ``ulysses_comm_bytes``, ``allgather_kv_comm_bytes``,
``rsa_comm_bytes``, ``lasp2_comm_bytes``, ``tp_gemm_comm_bytes``; see :mod:`.strategies`), so there
is nothing to match here: an :class:`Impl` only passes on what a caller of the ops chooses.
Descriptions of other systems (ring-flash-attn, the TokenRing authors' code, Megatron-LM), used to
reproduce published numbers, live in :mod:`.published`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

TP_IMPLS = ("fused", "ring", "chunked", "plain")


@dataclass(frozen=True)
class Impl:
    """The arguments of our ops that the cost model follows.

    Args:
        tp_impl: ``impl=`` of ``ok.all_gather_linear`` / ``ok.linear_reduce_scatter`` (TP-SP and
            Odysseus projections): the ledger kinds of their traffic (``"ring"``: ``p2p``;
            ``"fused"``: ``p2p`` for the gathers, ``reduce_scatter`` for the reductions;
            ``"chunked"``/``"plain"``: ``all_gather`` / ``reduce_scatter``). The bytes are the same.
        tp_save_gathered: ``save_gathered=`` of ``all_gather_linear``: keep the gathered input for
            the weight gradient (default) or gather it again in backward (Megatron-LM's choice).
    """

    tp_impl: str = "chunked"
    tp_save_gathered: bool = True

    def __post_init__(self):
        if self.tp_impl not in TP_IMPLS:
            raise ValueError(f"Impl.tp_impl: expected one of {', '.join(map(repr, TP_IMPLS))}, got {self.tp_impl!r}")

    def with_(self, **kw) -> "Impl":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


OURS = Impl()


def ours() -> Impl:
    """The default arguments of this package's ops (:data:`OURS`)."""
    return OURS


__all__ = ["Impl", "OURS", "TP_IMPLS", "ours"]
