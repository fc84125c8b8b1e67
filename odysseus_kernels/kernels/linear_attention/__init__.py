"""Linear attention local compute (no communication): reference, chunked pieces, state scan."""
from .reference import chunk_state, inter_chunk, intra_chunk, linear_attention_ref
from .scan import state_scan

__all__ = ["chunk_state", "inter_chunk", "intra_chunk", "linear_attention_ref", "state_scan"]
