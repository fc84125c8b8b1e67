"""odysseus-kernels: sequence-parallel building blocks for long-context training in PyTorch.

``import odysseus_kernels as ok``; everything public is re-exported here.
"""
from .comm import CommLedger, comm_ledger, group_info, skip_cross_rank_checks
from .extension import extension_available
from .ops import gather_sequence, local_positions, shard_sequence

__version__ = "0.1.0"

__all__ = [
    "CommLedger", "comm_ledger", "extension_available", "gather_sequence", "group_info",
    "local_positions", "shard_sequence", "skip_cross_rank_checks",
]
