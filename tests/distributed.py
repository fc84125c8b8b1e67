"""Multi-rank test harness: ``run_world(fn, world_size, *args)`` runs the module-level function
``fn(*args)`` on every rank of a live gloo world (one pool of workers per world size, reused across
the whole session) and returns the per-rank results. An exception on any rank fails the calling
test with that rank's traceback; a deadlock fails it after ``timeout`` seconds and kills the workers.
Workers run with torch.empty* NaN-filled (tests/nanfill.py) and one thread each.
"""
from __future__ import annotations

import atexit

from odysseus_kernels.comm import LocalWorld, RankError, WorldTimeout  # noqa: F401
from tests import nanfill

_worlds: dict[int, LocalWorld] = {}


def world(world_size: int) -> LocalWorld:
    w = _worlds.get(world_size)
    if w is None:
        w = _worlds[world_size] = LocalWorld(world_size, init_fn=nanfill.install)
    return w


def run_world(fn, world_size: int, *args, timeout: float = 120.0, **kwargs) -> list:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` ranks; return the list of rank results."""
    return world(world_size).run(fn, *args, timeout=timeout, **kwargs)


@atexit.register
def _shutdown_all() -> None:
    for w in _worlds.values():
        w.shutdown()
