"""Rank-consistent validation: bad input raises the same clear error on every rank, never a hang.

Usage inside an op, before any communication::

    with rank_consistent("ring_attention", group) as check:
        check.meta(q=q.shape, k=k.shape, dtype=q.dtype, causal=causal)
        if q.shape[2] % k.shape[2]:
            raise ValueError(...)

Exceptions raised inside the block are caught; then one small all-gather (8 bytes per rank) of a
hash of (metadata, error) tells every rank whether all ranks agree. If they do, the common error
(if any) is raised everywhere; if not, the metadata and errors are exchanged (only on this failure
path) and every rank raises the same ``ValueError`` naming the first field that differs, or the
error of the first failing rank. With one rank no collective runs.
The check can be skipped for speed with ``with ok.skip_cross_rank_checks():`` (local checks still
run, but then a rank-local error can leave the other ranks waiting).
"""
from __future__ import annotations

import contextlib
import hashlib

import torch
import torch.distributed as dist

from .._util import ScopedFlag
from .collectives import all_gather_tensor_sync
from .groups import GroupInfo, control_device, group_info
from .ledger import record

_skip = ScopedFlag()


def skip_cross_rank_checks():
    """``with skip_cross_rank_checks():`` ops skip the cross-rank metadata collective (local checks
    still run)."""
    return _skip.enabled()


class _Check:
    def __init__(self):
        self.fields: dict[str, str] = {}

    def meta(self, **fields) -> None:
        """Record values that must be identical on every rank (shapes, dtypes, flags)."""
        for k, v in fields.items():
            if isinstance(v, torch.Size):
                v = tuple(v)
            self.fields[k] = repr(v)


def _digest(fields: dict[str, str], err: BaseException | None) -> int:
    text = repr(sorted(fields.items())) + "|" + (f"{type(err).__name__}:{err}" if err else "")
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


@contextlib.contextmanager
def rank_consistent(op: str, group=None):
    """See the module docstring."""
    info: GroupInfo = group_info(group)
    check = _Check()
    err: Exception | None = None
    try:
        yield check
    except Exception as e:  # noqa: BLE001 - re-raised below on every rank
        err = e
    if info.size == 1 or _skip.on:
        if err is not None:
            raise err
        return
    dev = control_device(info)
    mine = torch.tensor([_digest(check.fields, err)], dtype=torch.int64, device=dev)
    allh = torch.empty(info.size, dtype=torch.int64, device=dev)
    record("metadata", 8 * (info.size - 1), 8 * (info.size - 1))
    all_gather_tensor_sync(allh, mine, info.group)
    if bool((allh == allh[0]).all()):
        if err is not None:
            raise err
        return
    # Slow path, failures only: exchange what each rank saw and raise the same error everywhere.
    mine_obj = (check.fields, None if err is None else (type(err).__name__, str(err), isinstance(err, TypeError)))
    objs: list = [None] * info.size
    dist.all_gather_object(objs, mine_obj, group=info.group)
    for r, (_, e) in enumerate(objs):
        if e is not None:
            name, msg, is_type = e
            cls = TypeError if is_type else ValueError
            if err is not None and r == info.rank:
                raise err
            if "(raised on rank " not in msg:  # nested checks: name the rank where it started once
                msg = f"{msg} (raised on rank {info.global_rank(r)})"
            raise cls(msg)
    keys = list(dict.fromkeys(k for f, _ in objs for k in f))
    for k in keys:
        vals = [f.get(k, "<missing>") for f, _ in objs]
        if len(set(vals)) > 1:
            per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(vals))
            raise ValueError(f"{op}: {k} must be the same on every rank of the group, got {per_rank}")
    raise ValueError(f"{op}: inputs differ across ranks")  # hash collision cannot reach here
