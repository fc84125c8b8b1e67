"""odysseus-kernels: sequence-parallel building blocks for long-context training in PyTorch.

``import odysseus_kernels as ok``; everything public is re-exported here.
"""
from . import layers, models  # noqa: F401  (apply_<strategy>, the Llama-style model)
from .comm import (CommLedger, CommTimeout, comm_ledger, comm_timeout, get_comm_timeout, get_validation, group_info,
                   set_comm_timeout, set_validation, skip_cross_rank_checks, validation)
from .extension import extension_available
from .kernels.launch import get_triton_launch, set_triton_launch, triton_launch
from .ops import (DEFAULT_LAYOUT, PackedShard, gather_packed, gather_sequence, local_attention, local_positions, shard_packed,
                  shard_sequence)
from .ops.lasp2 import lasp2_linear_attention
from .ops.tp_gemm import all_gather_linear, linear_reduce_scatter
from .ops.attention import (
    USPGroups,
    allgather_kv_attention,
    ring_attention,
    ring_self_attention,
    token_ring_attention,
    ulysses_attention,
    usp_attention,
    usp_groups,
)

__version__ = "0.1.0"


def __getattr__(name):
    """``ok.costmodel`` is imported on first use (it is not needed to run the ops)."""
    if name == "costmodel":
        import importlib

        return importlib.import_module(".costmodel", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_LAYOUT", "CommLedger", "PackedShard", "all_gather_linear", "costmodel", "lasp2_linear_attention", "layers", "linear_reduce_scatter", "models", "USPGroups", "gather_packed", "shard_packed", "allgather_kv_attention", "comm_ledger", "extension_available", "gather_sequence",
    "group_info", "local_attention", "local_positions", "ring_attention", "ring_self_attention", "shard_sequence",
    "skip_cross_rank_checks", "token_ring_attention", "ulysses_attention", "usp_attention", "usp_groups",
    "CommTimeout", "comm_timeout", "get_comm_timeout", "get_validation", "set_comm_timeout", "set_validation",
    "validation", "get_triton_launch", "set_triton_launch", "triton_launch",
]
