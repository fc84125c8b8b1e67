"""Strategy layers: ``apply_<strategy>(model, group, ...)`` (see :mod:`.strategies`)."""
from .common import ZeroShardedLinear, sync_replicated_grads
from .strategies import (
    ParallelPlan,
    SPCore,
    TPSPAttention,
    TPSPMLP,
    ZeroMLP,
    apply_allgather_kv,
    apply_lasp2,
    apply_lasp2h,
    apply_odysseus,
    apply_ring,
    apply_rsa,
    apply_token_ring,
    apply_tp_sp,
    apply_ulysses,
    apply_usp,
    full_grads,
)

__all__ = [
    "ParallelPlan", "SPCore", "TPSPAttention", "TPSPMLP", "ZeroMLP", "ZeroShardedLinear", "apply_allgather_kv",
    "apply_lasp2", "apply_lasp2h", "apply_odysseus", "apply_ring", "apply_rsa", "apply_token_ring", "apply_tp_sp",
    "apply_ulysses", "apply_usp", "full_grads", "sync_replicated_grads",
]
