"""Rank-consistent validation: bad input raises the same clear error on every rank, never a hang.

Usage inside an op, before any communication::

    with rank_consistent("ring_attention", group) as check:
        check.meta(q=q.shape, k=k.shape, dtype=q.dtype, causal=causal, softmax_scale=scale)
        if q.shape[2] % k.shape[2]:
            raise ValueError(...)

Exceptions raised inside the block are caught; then one small all-gather (8 bytes per rank) of a
hash of (metadata, error) tells every rank whether all ranks agree. If they do, the common error
(if any) is raised everywhere; if not, the metadata and errors are exchanged (only on this failure
path) and every rank raises the same ``ValueError`` naming the first field that differs, or the
error of the first failing rank. With one rank no collective runs.

Control plane on the CPU: the collective runs on the group's CPU side group
(:func:`~odysseus_kernels.comm.groups.control_group`: the group itself for gloo, a cached gloo group
over the same ranks for NCCL), on CPU tensors: it never touches a CUDA tensor nor waits on a CUDA
stream. Its waits are bounded by :func:`~odysseus_kernels.comm.timeout.comm_timeout` (a rank that
skips the call makes the others raise ``TimeoutError``).

Values in the digest: ``check.meta`` takes plain values (numbers, strings, tuples, lists, dicts,
``torch.Size``, dtypes) and tensors. A tensor is digested by dtype, shape and the hash of its bytes,
so values that must agree (softmax scales, windows, ``cu_seqlens``, decay values) can be checked by
value. A CPU tensor costs a hash of its bytes; a CUDA tensor is copied to the host first, which is
a device-to-host synchronisation: pass host-side values (lists, numbers, or a CPU copy the op keeps)
on hot paths. Nothing is hashed or copied under ``set_validation("local")``.

The switch: ``ok.set_validation("full")`` (default: cross-rank + local checks) or ``"local"``
(local checks only, no collective: saves the check's host time, ~0.1-0.3 ms per op call on gloo;
but a rank-local error, or inputs that differ across ranks, then leave the other ranks waiting in
the op's communication until the ``comm_timeout`` bound, and differing values are not detected).
``with ok.validation("local"):`` sets it for a block; ``ok.skip_cross_rank_checks()`` is the same
as ``validation("local")`` for the current thread.
"""
from __future__ import annotations

import contextlib
import hashlib
import pickle

import torch
import torch.distributed as dist

from .._util import ScopedFlag
from .groups import GroupInfo, control_device, control_group, group_info
from .ledger import record
from .timeout import note_checked, wait_bounded

_skip = ScopedFlag()
VALIDATION_MODES = ("full", "local")
_mode = "full"


def set_validation(mode: str) -> None:
    """Process-wide: ``"full"`` (cross-rank + local checks, the default) or ``"local"`` (local
    checks only; see the module docstring for the trade-off)."""
    global _mode
    if mode not in VALIDATION_MODES:
        raise ValueError(f"set_validation: mode must be one of {VALIDATION_MODES}, got {mode!r}")
    _mode = mode


def get_validation() -> str:
    """The validation mode in effect on this thread (``"full"`` or ``"local"``)."""
    return "local" if _skip.on else _mode


@contextlib.contextmanager
def validation(mode: str):
    """``with ok.validation("local"):`` the process-wide mode for the block (restored after)."""
    global _mode
    prev = _mode
    set_validation(mode)
    try:
        yield mode
    finally:
        _mode = prev


def skip_cross_rank_checks():
    """``with skip_cross_rank_checks():`` ops skip the cross-rank metadata collective on this thread
    (local checks still run), like ``validation("local")``."""
    return _skip.enabled()


def _canon(v):
    """A hashable, printable, rank-independent form of a metadata value."""
    if isinstance(v, torch.Tensor):
        t = v.detach()
        if t.device.type != "cpu":
            t = t.cpu()  # a device-to-host copy (synchronises): see the module docstring
        t = t.contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().tobytes() if t.numel() else b""
        digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
        if t.numel() <= 8:
            return f"tensor({t.tolist()}, dtype={t.dtype}, shape={tuple(t.shape)})"
        return f"tensor(dtype={t.dtype}, shape={tuple(t.shape)}, bytes#{digest})"
    if isinstance(v, torch.Size):
        return tuple(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_canon(x) for x in v)
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    return v


_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)


def _typed_key(v):
    """A hashable key that identifies a plain metadata value by type and value (``1``, ``1.0`` and
    ``True`` differ), or ``None`` when ``v`` holds anything else (tensors are digested by value, lists
    and dicts are not hashable): the cache of :meth:`_Check.signed` then does not apply."""
    if isinstance(v, float):  # by its text: 0.0 == -0.0 (same hash) but they print, so digest, apart
        return (type(v), repr(v))
    if isinstance(v, _PLAIN):
        return (type(v), v)
    if isinstance(v, tuple):  # torch.Size is a tuple
        if all(type(x) is int for x in v):  # shapes: the common case, one pass (bool is not int here)
            return (tuple, v)
        keys = tuple(_typed_key(x) for x in v)
        return None if None in keys else (tuple, keys)
    return None


_signed_cache: dict = {}  # typed metadata -> (fields, digest without error), per process


class _Check:
    def __init__(self):
        self._raw: dict[str, object] = {}

    def meta(self, **fields) -> None:
        """Record values that must be identical on every rank (shapes, dtypes, flags, and values
        such as scales, windows, cu_seqlens or decay tensors)."""
        self._raw.update(fields)

    @property
    def fields(self) -> dict[str, str]:
        return {k: repr(_canon(v)) for k, v in self._raw.items()}

    def signed(self, err: BaseException | None) -> tuple[dict[str, str], int]:
        """``(fields, digest)``; for plain metadata without an error both are cached per value (an op
        called again with the same shapes and flags hashes nothing)."""
        key = None
        if err is None:
            key = tuple((k, _typed_key(v)) for k, v in self._raw.items())
            if any(t is None for _, t in key):
                key = None
            else:
                hit = _signed_cache.get(key)
                if hit is not None:
                    return hit
        fields = self.fields
        out = (fields, _digest(fields, err))
        if key is not None:
            if len(_signed_cache) >= 4096:  # bounded: shapes of a long run with varying lengths
                _signed_cache.clear()
            _signed_cache[key] = out
        return out


def _digest(fields: dict[str, str], err: BaseException | None) -> int:
    text = repr(sorted(fields.items())) + "|" + (f"{type(err).__name__}:{err}" if err else "")
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def _gather_int64(value: int, info: GroupInfo, cgroup, op: str) -> torch.Tensor:
    dev = control_device(info)
    mine = torch.tensor([value], dtype=torch.int64, device=dev)
    out = torch.empty(info.size, dtype=torch.int64, device=dev)
    _all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    work = _all_gather(out, mine, group=cgroup, async_op=True)
    wait_bounded([work], what="cross-rank check (metadata all-gather)", op=op, step="check", info=info)
    return out


def all_gather_bytes(obj, info: GroupInfo, op: str, cgroup=None) -> list:
    """Every rank's picklable ``obj`` over the CPU control group, with bounded waits."""
    if cgroup is None:
        cgroup = control_group(info)
    data = pickle.dumps(obj)
    sizes = _gather_int64(len(data), info, cgroup, op).tolist()
    width = max(sizes)
    mine = torch.zeros(width, dtype=torch.uint8)
    if data:
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    out = torch.empty(info.size * width, dtype=torch.uint8)
    _all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    work = _all_gather(out, mine, group=cgroup, async_op=True)
    wait_bounded([work], what="cross-rank check (metadata exchange)", op=op, step="check", info=info)
    rows = out.view(info.size, width)
    return [pickle.loads(rows[r, : sizes[r]].numpy().tobytes()) for r in range(info.size)]


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
    note_checked(op)
    if info.size == 1 or get_validation() == "local":
        if err is not None:
            raise err
        return
    cgroup = control_group(info)
    fields, digest = check.signed(err)
    record("metadata", 8 * (info.size - 1), 8 * (info.size - 1))
    allh = _gather_int64(digest, info, cgroup, op).tolist()  # a CPU tensor: no device synchronisation
    if allh.count(allh[0]) == len(allh):
        if err is not None:
            raise err
        return
    # Slow path, failures only: exchange what each rank saw and raise the same error everywhere.
    mine_obj = (fields, None if err is None else (type(err).__name__, str(err), isinstance(err, TypeError)))
    objs = all_gather_bytes(mine_obj, info, op, cgroup)
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
