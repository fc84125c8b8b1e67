"""Multi-rank test harness: ``run_world(fn, world_size, *args)`` runs the module-level function
``fn(*args)`` on every rank of a live gloo world (one pool of workers per world size, reused across
the whole session) and returns the per-rank results. An exception on any rank fails the calling
test with that rank's traceback; a deadlock fails it after ``timeout`` seconds and kills the workers.
Workers run with torch.empty* NaN-filled (tests/nanfill.py) and one thread each.

Every task starts clean (:func:`_clean_task`), as if on a fresh world: what a task changes is put
back when it ends (the validation mode, the comm timeout, torch's default dtype, grad mode, thread
count and deterministic flag, and every function or class of a module of ``odysseus_kernels``,
``torch`` or ``torch.distributed`` a task replaced, e.g. a spy or the NaN-filling ``torch.empty``),
and the process groups a task created are destroyed when the next task starts (all ranks finished
the previous one by then), together with the ``comm`` caches keyed by them. A group meant to live
across tasks is made through :func:`world_cached`.
"""
from __future__ import annotations

import atexit
import sys
import types

from odysseus_kernels.comm import LocalWorld, RankError, WorldTimeout  # noqa: F401
from tests import nanfill

_worlds: dict[int, LocalWorld] = {}


def world(world_size: int) -> LocalWorld:
    w = _worlds.get(world_size)
    if w is None:
        w = _worlds[world_size] = LocalWorld(world_size, init_fn=nanfill.install)
    return w


def run_world(fn, world_size: int, *args, timeout: float = 120.0, **kwargs) -> list:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` ranks, from a clean state; return the list of
    rank results."""
    return world(world_size).run(_clean_task, fn, args, kwargs, timeout=timeout)


@atexit.register
def _shutdown_all() -> None:
    for w in _worlds.values():
        w.shutdown()


# ---------------------------------------------------------------------------- worker side

_PATCHABLE = ("torch", "torch.distributed", "torch.distributed.distributed_c10d")
_leftover_groups: list = []  # groups the previous task created (destroyed when the next one starts)
_kept_groups: set = set()  # groups made by world_cached: they live as long as the world
_cache: dict = {}


_modules_seen: tuple = (0, [])  # (len(sys.modules), the patchable modules then)


def _patchable_modules() -> list:
    global _modules_seen
    if _modules_seen[0] != len(sys.modules):
        _modules_seen = (len(sys.modules), [
            m for name, m in list(sys.modules.items())
            if isinstance(m, types.ModuleType) and (name in _PATCHABLE or name == "odysseus_kernels"
                                                    or name.startswith("odysseus_kernels."))])
    return _modules_seen[1]


def _snapshot() -> dict:
    import torch

    import odysseus_kernels as ok

    return {"attrs": [(m, dict(vars(m))) for m in _patchable_modules()], "new_empty": torch.Tensor.new_empty,
            "validation": ok.get_validation(), "comm_timeout": ok.get_comm_timeout(),
            "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled(), "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled()}


def _restore(snap: dict) -> None:
    import torch

    import odysseus_kernels as ok

    for m, attrs in snap["attrs"]:  # functions and classes a task replaced (data is the module's own)
        now = vars(m)
        for k, v in attrs.items():
            if now.get(k) is not v and callable(v) and not isinstance(v, types.ModuleType):
                setattr(m, k, v)
    torch.Tensor.new_empty = snap["new_empty"]
    ok.set_validation(snap["validation"])
    ok.set_comm_timeout(snap["comm_timeout"])
    torch.set_default_dtype(snap["dtype"])
    torch.set_grad_enabled(snap["grad"])
    torch.set_num_threads(snap["threads"])
    torch.use_deterministic_algorithms(snap["deterministic"])


def _groups() -> list:
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    return list(c10d._world.pg_map) if dist.is_initialized() else []


def _destroy_leftover_groups() -> None:
    import torch.distributed as dist

    from odysseus_kernels.comm import forget_group

    for g in _leftover_groups:
        forget_group(g)  # the package's caches of it (backend, control group, USP groups)
        if g in _groups():
            dist.destroy_process_group(g)
    _leftover_groups.clear()


def _clean_task(fn, args, kwargs):
    """Run ``fn(*args, **kwargs)`` on this rank from a clean state and put the state back after."""
    _destroy_leftover_groups()
    before = set(_groups())
    snap = _snapshot()
    try:
        return fn(*args, **kwargs)
    finally:
        _restore(snap)
        _leftover_groups.extend(g for g in _groups() if g not in before and g not in _kept_groups)


def world_cached(key, make):
    """Worker side: ``make()`` once per world (e.g. a subgroup; every rank must call this with the
    same keys in the same order), the same object in the world's later tasks. Process groups it
    creates are kept for the life of the world."""
    if key not in _cache:
        before = set(_groups())
        _cache[key] = make()
        _kept_groups.update(g for g in _groups() if g not in before)
    return _cache[key]
