"""Distributed autograd ops: compose ``kernels/`` (local compute) and ``comm/`` (communication)."""
from .layout import gather_sequence, layout_chunks, local_positions, shard_sequence
from .local_attention import local_attention

__all__ = ["gather_sequence", "layout_chunks", "local_attention", "local_positions", "shard_sequence"]
