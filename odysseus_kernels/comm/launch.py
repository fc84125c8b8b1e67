"""A local world of W processes joined by a gloo (or NCCL) process group, kept alive and reused.

Used by the test suite (a pool per world size, so hundreds of distributed checks pay the process
start-up once) and by the playground (a local world when not launched by ``torchrun``).

``LocalWorld(W).run(fn, *args)`` runs the module-level function ``fn(*args)`` on every rank and
returns the list of per-rank results. If any rank raises, :class:`RankError` carries every failing
rank's traceback; if the ranks do not all answer within ``timeout`` seconds (a deadlock), the
workers are killed and :class:`WorldTimeout` is raised. After a failure or a timeout the world is
shut down (its group may be out of step); the next ``run`` starts a fresh one.
"""
from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback


class RankError(RuntimeError):
    """One or more ranks raised; ``.failures`` maps rank -> formatted traceback."""

    def __init__(self, failures: dict[int, str]):
        self.failures = failures
        text = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(failures.items()))
        super().__init__(f"{len(failures)} rank(s) failed:\n{text}")


class WorldTimeout(TimeoutError):
    """The ranks did not all finish in time (e.g. a deadlock); the workers were killed."""


def _worker(rank: int, world: int, init_file: str, backend: str, tasks, results, init_fn, threads,
            pg_timeout: float) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if init_fn is not None:
        init_fn()
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=pg_timeout))
    results.put((rank, -1, True, None))  # ready
    while True:
        item = tasks.get()
        if item is None:
            break
        task_id, fn, args, kwargs = item
        try:
            out = fn(*args, **kwargs)
            results.put((rank, task_id, True, out))
        except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
            results.put((rank, task_id, False, traceback.format_exc()))
    dist.destroy_process_group()


class LocalWorld:
    """W live worker processes in one process group. See the module docstring."""

    def __init__(self, world_size: int, *, backend: str = "gloo", init_fn=None, threads: int = 1,
                 start_timeout: float = 180.0, pg_timeout: float = 100.0):
        self.world_size = world_size
        self.backend = backend
        self._init_fn = init_fn
        self._threads = threads
        self._start_timeout = start_timeout
        self._pg_timeout = pg_timeout
        self._procs: list = []
        self._task_id = 0

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        fd, self._init_file = tempfile.mkstemp(prefix="odysseus_rdzv_")
        os.close(fd)
        os.unlink(self._init_file)  # the file store creates it
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(self.world_size)]
        self._procs = [
            ctx.Process(target=_worker, daemon=True,
                        args=(r, self.world_size, self._init_file, self.backend, self._tasks[r],
                              self._results, self._init_fn, self._threads, self._pg_timeout))
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        self._collect(-1, self._start_timeout)

    def _collect(self, task_id: int, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        got: dict[int, tuple[bool, object]] = {}
        first_failure = None
        while len(got) < self.world_size:
            left = deadline - time.monotonic()
            if first_failure is not None:
                # Once a rank failed, the others get a short grace period to report (they may be
                # blocked in a collective with the failed rank).
                left = min(left, first_failure + 5.0 - time.monotonic())
            if left <= 0:
                break
            try:
                rank, tid, ok, payload = self._results.get(timeout=min(left, 1.0))
            except queue.Empty:
                if any(not p.is_alive() for p in self._procs):
                    dead = [r for r, p in enumerate(self._procs) if not p.is_alive() and r not in got]
                    for r in dead:
                        got[r] = (False, f"worker process died (exit code {self._procs[r].exitcode})")
                    if first_failure is None and dead:
                        first_failure = time.monotonic()
                continue
            if tid != task_id:
                continue
            got[rank] = (ok, payload)
            if not ok and first_failure is None:
                first_failure = time.monotonic()
        failures = {r: p for r, (ok, p) in got.items() if not ok}
        if len(got) < self.world_size:
            self.shutdown()
            if failures:
                missing = sorted(set(range(self.world_size)) - set(got))
                for r in missing:
                    failures[r] = "did not finish (likely waiting on a failed rank); killed"
                raise RankError(failures)
            raise WorldTimeout(f"ranks {sorted(set(range(self.world_size)) - set(got))} of "
                               f"{self.world_size} did not finish within {timeout:.0f}s; workers killed")
        if failures:
            self.shutdown()
            raise RankError(failures)
        return [got[r][1] for r in range(self.world_size)]

    def run(self, fn, *args, timeout: float = 120.0, **kwargs) -> list:
        """Run ``fn(*args, **kwargs)`` on every rank; return the per-rank results."""
        if not self.alive:
            self.shutdown()
            self._start()
        self._task_id += 1
        for q in self._tasks:
            q.put((self._task_id, fn, args, kwargs))
        return self._collect(self._task_id, timeout)

    def shutdown(self) -> None:
        """Stop the workers (politely, then by force)."""
        if not self._procs:
            return
        for q, p in zip(self._tasks, self._procs):
            if p.is_alive():
                try:
                    q.put(None)
                except Exception:  # noqa: BLE001
                    pass
        deadline = time.monotonic() + 2.0
        started = [p for p in self._procs if p.pid is not None]
        for p in started:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in started:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self._procs = []
        try:
            os.unlink(self._init_file)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
