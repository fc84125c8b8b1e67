"""Linear attention local compute (no communication): the O(L^2) reference, the chunked steps
(torch and Triton, dispatched by ``backend``; Triton launch configs in :mod:`.configs`), the
cross-shard pieces and the state scan. Decay: per-token ``g`` and per-head ``g_gamma`` (fla names)."""
from .api import (
    chunk_bwd_dh,
    chunk_bwd_dqkv,
    chunk_fwd_h,
    chunk_fwd_o,
    intra_chunk_bwd,
    intra_chunk_fwd,
)
from .reference import (
    chunk_state,
    decay_grad,
    inter_chunk,
    inter_chunk_backward,
    linear_attention_ref,
    shard_cumsum,
    state_grad,
)
from .scan import state_scan

__all__ = ["chunk_bwd_dh", "chunk_bwd_dqkv", "chunk_fwd_h", "chunk_fwd_o", "chunk_state", "decay_grad",
           "inter_chunk", "inter_chunk_backward", "intra_chunk_bwd", "intra_chunk_fwd", "linear_attention_ref",
           "shard_cumsum", "state_grad", "state_scan"]
