"""``comm``: the only part of the package that calls torch.distributed.

Groups (:mod:`.groups`), the byte ledger (:mod:`.ledger`), rank-consistent validation
(:mod:`.validate`), async collectives on a communication stream (:mod:`.collectives`), the P2P ring
exchange (:mod:`.p2p`), bounded waits (:mod:`.timeout`) and a local multi-process world for tests and the playground (:mod:`.launch`).
"""
from .collectives import (
    CommHandle,
    all_gather,
    all_gather_objects,
    all_gather_async,
    all_reduce,
    all_reduce_async,
    all_to_all,
    all_to_all_async,
    comm_stream,
    reduce_scatter,
    reduce_scatter_async,
)
from .groups import GroupInfo, control_group, forget_group, group_info, new_group, on_forget
from .launch import LocalWorld, RankError, WorldTimeout
from .ledger import CommLedger, KindStats, comm_ledger
from .p2p import exchange, ring_exchange
from .timeout import CommTimeout, comm_timeout, get_comm_timeout, op_context, set_comm_timeout
from .validate import get_validation, rank_consistent, set_validation, skip_cross_rank_checks, validation

__all__ = [
    "CommHandle", "CommLedger", "GroupInfo", "KindStats", "LocalWorld", "RankError", "WorldTimeout",
    "all_gather", "all_gather_async", "all_gather_objects", "all_reduce", "all_reduce_async", "all_to_all", "all_to_all_async",
    "comm_ledger", "comm_stream", "exchange", "group_info", "new_group", "rank_consistent", "reduce_scatter",
    "reduce_scatter_async", "ring_exchange", "skip_cross_rank_checks",
    "CommTimeout", "comm_timeout", "control_group", "forget_group", "on_forget", "get_comm_timeout", "get_validation", "op_context",
    "set_comm_timeout", "set_validation", "validation",
]
