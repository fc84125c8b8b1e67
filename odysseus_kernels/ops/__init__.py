"""Distributed autograd ops: compose ``kernels/`` (local compute) and ``comm/`` (communication)."""
from .layout import gather_sequence, layout_chunks, local_positions, shard_sequence

__all__ = ["gather_sequence", "layout_chunks", "local_positions", "shard_sequence"]
