"""Sequence-parallel softmax attention: ring (contiguous, zigzag), TokenRing, Ulysses, USP and
all-gather-KV, and the 2021 Ring Self-Attention baseline, all exact in forward and backward. The
rings are schedules on the package's one ring driver (:mod:`odysseus_kernels.ops.ring`), planned
from chunk lists (:mod:`.blocks`); :mod:`.scheduled` is their autograd glue."""
from .allgather_kv import allgather_kv_attention, allgather_kv_comm_bytes
from .ring import ring_attention, ring_comm_bytes
from .rsa import ring_self_attention, rsa_comm_bytes, rsa_memory_bytes
from .token_ring import token_ring_attention, token_ring_comm_bytes
from .ulysses import USPGroups, ulysses_attention, ulysses_comm_bytes, usp_attention, usp_groups

__all__ = [
    "USPGroups", "allgather_kv_attention", "allgather_kv_comm_bytes", "ring_attention", "ring_comm_bytes", "ring_self_attention", "rsa_comm_bytes", "rsa_memory_bytes",
    "token_ring_attention", "token_ring_comm_bytes", "ulysses_attention", "ulysses_comm_bytes", "usp_attention",
    "usp_groups",
]
