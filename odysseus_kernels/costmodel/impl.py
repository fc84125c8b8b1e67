"""Implementation choices that change bytes on the wire or overlap, gathered in one place.

The closed forms of REFERENCE.md leave some details to the implementation (the precision of a
travelling partial, whether a gathered input is saved or gathered again, what TokenRing's backward
sends). :class:`Impl` names each one. :data:`OURS` holds the values the cost model assumes for
this package; the fields marked **to be matched to the implementation** are the ones the ledger
tests pin down once the ops exist: change them here, and every prediction follows.

Presets for published systems (:data:`PUBLISHED`) describe the code behind the numbers the
validation reproduces (ring-flash-attn, the TokenRing paper's code, Megatron, ...).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Impl:
    """Wire formats, schedules and overlap of one implementation of the strategies.

    Ring attention (``ring``, ``zigzag``, USP's ring):
        ring_dkv_bytes: wire format of the travelling dK/dV partials: ``"acc"`` (fp32 accumulators,
            fp64 for fp64 inputs), ``"input"`` (the activation dtype) or a byte count. Matched to
            ``ops/attention/ring.py`` (``ring_comm_bytes``: fp32).
        ring_dkv_transfers: ``"n-1"`` (the dK/dV accumulator starts at the first remote rank and
            returns after N-1 hops: backward = 2x forward, REFERENCE.md) or ``"n"`` (it starts at the
            owner, as ring-flash-attn does). Matched: ``"n-1"``.
        merge_bytes_fwd / merge_bytes_bwd: HBM bytes per output element per ring step spent merging
            partial results outside the attention kernel (online-softmax out/lse update in forward;
            dq/dk/dv accumulation in backward). Fused: 0 fwd (merged in-kernel), 10 bwd (fp32 dq
            read-modify-write). ring-flash-attn's eager PyTorch update: 38 fwd (bf16->fp32 cast 6,
            ``out - block_out`` 12, sigmoid product 8, subtraction 12), 30 bwd (three fp32 accumulations).

    TokenRing (``token_ring``) -- :func:`token_ring_wire` holds its volume:
        token_ring_out_bytes: wire format of the partial output sent back (``"acc"``: fp32, as
            ``ops/attention/token_ring.py``; ``"input"``: the activation dtype, as the TokenRing
            authors' code). **To be matched to the implementation.**
        token_ring_stats_bytes: wire format of lse (forward) and lse, delta and the dQ partial
            (backward). **To be matched.**
        token_ring_zigzag_q: with zigzag, send only the half of Q the receiver needs (REFERENCE.md).
        token_ring_bwd: the backward this package designs (REFERENCE.md leaves it to us): K/V stay
            resident; Q, dO (input dtype), lse and D = rowsum(dO*O) travel one way, the dQ partial comes
            back the other way; dK/dV accumulate at their owner. **To be matched.**

    Ulysses / USP:
        ulysses_kv_replicate: when kv heads < the Ulysses degree, replicate k/v heads up to the degree
            before the all-to-all (the only way each rank gets a whole kv head). **To be matched.**

    all-gather-KV (``allgather_kv``, LASP-2H softmax layers):
        allgather_kv_regather: gather K/V again in backward instead of saving the gathered copies.
            **To be matched.**
        allgather_kv_overlap: the gather overlaps the local diagonal block.
        allgather_kv_grad_bytes: wire format of the dK/dV reduce-scatter (``"acc"``: fp32, as
            ``allgather_kv_comm_bytes``). **To be matched.**

    TP-SP / Odysseus GEMMs:
        tp_ag_kind / tp_rs_kind: ledger kinds of the chunked AllGather-GEMM / GEMM-ReduceScatter
            (``"all_gather"``/``"reduce_scatter"``, or ``"p2p"`` for a ring implementation). **To be matched.**
        tp_regather: AG-GEMM gathers its input again in backward for the weight gradient instead of
            saving the gathered input (Megatron's default). **To be matched.**
        tp_overlap: the chunked pipeline hides communication behind the GEMM chunks.

    ZeRO-3 weights (Odysseus MLP, ``weights="zero3"``):
        zero3_regather: gather the weights again in backward (FSDP) instead of keeping them.
            **To be matched** (``ZeroShardedLinear`` keeps the gathered weight for backward).
        zero3_prefetch: weight gathers overlap the previous layer's compute.

    LASP-2:
        lasp2_state_heads: ``"q"`` (states of ``[B, H, d, d]``, as REFERENCE.md and issue 5 write) or
            ``"kv"`` (``[B, H_kv, d, d]`` under GQA). **To be matched.**
        lasp2_state_bytes: bytes per state element (fp32: 4).

    RSA:
        rsa_grad_reduce_kind: how full-length dK/dV partials return to their owners
            (``"reduce_scatter"`` or ``"p2p"``). Matched: reduce_scatter.
        rsa_grad_bytes: their wire format (``"acc"``: fp32, as ``rsa_comm_bytes``).

    Linear-attention layers under ``ring`` (a published baseline, not an op of this package):
        linear_ring_right_product: compute each visiting K/V block with the right product
            ``Q (K^T V)`` instead of the standard-attention manner ``(Q K^T) V``.
    """

    ring_dkv_bytes: int | str = "acc"
    ring_dkv_transfers: str = "n-1"
    merge_bytes_fwd: float = 0.0
    merge_bytes_bwd: float = 10.0
    token_ring_out_bytes: int | str = "acc"
    token_ring_stats_bytes: int | str = "acc"
    token_ring_zigzag_q: bool = True
    token_ring_bwd: bool = True
    ulysses_kv_replicate: bool = True
    allgather_kv_regather: bool = False
    allgather_kv_overlap: bool = False
    allgather_kv_grad_bytes: int | str = "acc"
    tp_ag_kind: str = "all_gather"
    tp_rs_kind: str = "reduce_scatter"
    tp_regather: bool = False
    tp_overlap: bool = True
    zero3_regather: bool = False
    zero3_prefetch: bool = True
    lasp2_state_heads: str = "q"
    lasp2_state_bytes: int = 4
    rsa_grad_reduce_kind: str = "reduce_scatter"
    rsa_grad_bytes: int | str = "acc"
    linear_ring_right_product: bool = False

    def __post_init__(self):
        if self.ring_dkv_transfers not in ("n-1", "n"):
            raise ValueError(f"Impl.ring_dkv_transfers: expected 'n-1' or 'n', got {self.ring_dkv_transfers!r}")
        if self.lasp2_state_heads not in ("q", "kv"):
            raise ValueError(f"Impl.lasp2_state_heads: expected 'q' or 'kv', got {self.lasp2_state_heads!r}")
        for f in ("tp_ag_kind", "tp_rs_kind"):
            if getattr(self, f) not in ("all_gather", "reduce_scatter", "p2p"):
                raise ValueError(f"Impl.{f}: expected 'all_gather', 'reduce_scatter' or 'p2p', "
                                 f"got {getattr(self, f)!r}")
        if self.rsa_grad_reduce_kind not in ("reduce_scatter", "p2p"):
            raise ValueError(f"Impl.rsa_grad_reduce_kind: expected 'reduce_scatter' or 'p2p', "
                             f"got {self.rsa_grad_reduce_kind!r}")
        for f in ("ring_dkv_bytes", "token_ring_out_bytes", "token_ring_stats_bytes", "allgather_kv_grad_bytes",
                  "rsa_grad_bytes"):
            v = getattr(self, f)
            if v not in ("acc", "input") and not (isinstance(v, int) and v > 0):
                raise ValueError(f"Impl.{f}: expected 'acc', 'input' or a positive byte count, got {v!r}")

    @staticmethod
    def wire(spec, b: int) -> int:
        """Bytes per element of a wire format: ``"input"`` -> ``b``; ``"acc"`` -> the fp32 accumulator
        (fp64 for fp64 inputs); an int -> itself."""
        if spec == "input":
            return b
        if spec == "acc":
            return 8 if b == 8 else 4
        return int(spec)

    def with_(self, **kw) -> "Impl":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        return asdict(self)


# What this package's ops are assumed to do (the lead adjusts the "to be matched" fields once the
# ledger tests of the real ops pin them).
OURS = Impl()

PUBLISHED: dict[str, Impl] = {
    # zhuzilin/ring-flash-attention: eager PyTorch out/lse merge, fp32 dk/dv buffers sent every step.
    "ring-flash-attn": Impl(ring_dkv_bytes=4, ring_dkv_transfers="n", merge_bytes_fwd=38.0, merge_bytes_bwd=30.0),
    # the TokenRing authors' code (ACA-Lab-SJTU/token-ring, on ring-flash-attn's zigzag test): block_out
    # in the input dtype, lse fp32; its nsight trace shows steps of the block alone (~3.5 ms), so the
    # partial outputs are not merged on the per-step path.
    "tokenring-paper": Impl(token_ring_out_bytes="input", token_ring_stats_bytes=4, merge_bytes_fwd=0.0,
                            merge_bytes_bwd=30.0),
    # Megatron-LM sequence parallelism: input re-gathered in backward; Odysseus-Transformer's TP-SP.
    "megatron": Impl(tp_regather=True),
}


def ours() -> Impl:
    """The implementation this package is assumed to have (:data:`OURS`)."""
    return OURS


__all__ = ["Impl", "OURS", "PUBLISHED", "ours"]
