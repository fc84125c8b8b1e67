"""Linear attention local compute (no communication): reference, chunked pieces, state scan."""
from .reference import (
    chunk_state,
    inter_chunk,
    inter_chunk_backward,
    intra_chunk,
    intra_chunk_backward,
    linear_attention_ref,
    state_grad,
)
from .scan import state_scan

__all__ = ["chunk_state", "inter_chunk", "inter_chunk_backward", "intra_chunk", "intra_chunk_backward",
           "linear_attention_ref", "state_grad", "state_scan"]
