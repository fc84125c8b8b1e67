"""Distributed autograd ops: compose ``kernels/`` (local compute) and ``comm/`` (communication)."""
from .layout import (DEFAULT_LAYOUT, PackedShard, gather_packed, gather_sequence, layout_chunks, layout_spans, local_positions,
                     shard_packed, shard_sequence)
from .local_attention import local_attention

__all__ = ["DEFAULT_LAYOUT", "PackedShard", "gather_packed", "layout_spans", "shard_packed", "gather_sequence", "layout_chunks", "local_attention", "local_positions", "shard_sequence"]
