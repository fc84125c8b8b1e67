"""Bounded waits: every wait inside ``comm/`` ends within a time bound with a clear ``TimeoutError``.

``ok.set_comm_timeout(seconds)`` sets the process-wide bound (default 300 s, or the environment
variable ``ODYSSEUS_COMM_TIMEOUT``); ``with ok.comm_timeout(seconds):`` overrides it for a block
(per thread). When a wait inside an op runs past the bound, :class:`CommTimeout` (a
``TimeoutError``) is raised naming the op, the step and the peer(s) waited for, e.g.::

    TimeoutError: ring_attention (forward), step 2: timed out after 3.0 s waiting for the p2p
    receive from rank 1 of a group of 3 (global rank 1) ...

Which waits are bounded: every wait on a CPU (gloo) process group, which blocks the host, and the
cross-rank check (it runs on a CPU side group, see :mod:`.validate`). On an NCCL group a handle's
``wait()`` only orders the current CUDA stream after the communication (the host does not block,
so there is nothing to time out on the host); there the bound is NCCL's own watchdog with the
process group's ``timeout=`` (pass ``timeout=datetime.timedelta(seconds=ok.get_comm_timeout())`` to
``init_process_group``), see the README for ``TORCH_NCCL_ASYNC_ERROR_HANDLING``.

After a timeout the group is out of step (the peer that failed or skipped the call never posted
its side): destroy and re-create it (``dist.destroy_process_group(group)`` / ``dist.new_group``),
or let torchrun restart the job. Never reuse a timed-out group.

Op and step context: an op may wrap its body in ``with comm.op_context("ring_attention"):`` and
pass ``step=`` to the exchange calls. Without it, the op is the last one that ran its cross-rank
check on this thread (forward) or the autograd node being run (backward), and the step is the
number of communication calls posted since then (0-based) -- so existing ops need no change.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import threading
import time

import torch

DEFAULT_TIMEOUT_S = 300.0
_ENV = "ODYSSEUS_COMM_TIMEOUT"


class CommTimeout(TimeoutError):
    """A wait inside ``comm/`` ran past the bound. ``op``, ``step``, ``peers`` and ``seconds``
    say which wait; the group is out of step and must be destroyed and re-created."""

    def __init__(self, msg: str, *, op: str, step, peers, seconds: float):
        super().__init__(msg)
        self.op, self.step, self.peers, self.seconds = op, step, tuple(peers), seconds


def _env_default() -> float:
    raw = os.environ.get(_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{_ENV} must be a number of seconds, got {raw!r}") from None
    _check_seconds(v, _ENV)
    return v


def _check_seconds(seconds, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(seconds).__name__}")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{what} must be a finite number of seconds > 0, got {seconds!r}")
    return float(seconds)


_default = _env_default()
_local = threading.local()


def set_comm_timeout(seconds: float) -> None:
    """Set the process-wide bound (seconds) on every wait inside ``comm/`` (default 300 s or
    ``$ODYSSEUS_COMM_TIMEOUT``)."""
    global _default
    _default = _check_seconds(seconds, "set_comm_timeout: seconds")


def get_comm_timeout() -> float:
    """The bound in effect on this thread (the innermost ``comm_timeout`` block, else the
    process-wide default)."""
    stack = getattr(_local, "timeouts", None)
    return stack[-1] if stack else _default


@contextlib.contextmanager
def comm_timeout(seconds: float):
    """``with ok.comm_timeout(30):`` bounds every wait inside the ops called in the block (this
    thread; nestable). See the module docstring."""
    seconds = _check_seconds(seconds, "comm_timeout: seconds")
    stack = getattr(_local, "timeouts", None)
    if stack is None:
        stack = _local.timeouts = []
    stack.append(seconds)
    try:
        yield seconds
    finally:
        stack.pop()


# ---- op / step context ---------------------------------------------------------------------------

class _Ctx:
    __slots__ = ("op", "phase", "calls", "key")

    def __init__(self, op: str, phase: str, key=None):
        self.op, self.phase, self.calls, self.key = op, phase, 0, key


def _state() -> threading.local:
    if not hasattr(_local, "explicit"):
        _local.explicit = []
        _local.last = None
    return _local


@contextlib.contextmanager
def op_context(op: str, phase: str = "forward"):
    """Name the op (and phase) that the communication posted in the block belongs to."""
    st = _state()
    st.explicit.append(_Ctx(op, phase))
    try:
        yield
    finally:
        st.explicit.pop()


def note_checked(op: str) -> None:
    """Called by the cross-rank check: later communication on this thread belongs to ``op``."""
    st = _state()
    st.last = _Ctx(op, "forward")


def current_context(step=None) -> tuple[str, object]:
    """``(op label, step)`` for a communication call being posted now (and count the call)."""
    st = _state()
    if st.explicit:
        ctx = st.explicit[-1]
    else:
        node = None
        try:
            node = torch._C._current_autograd_node()
        except Exception:  # noqa: BLE001 - private API; the context is only for messages
            node = None
        if node is not None:
            if st.last is None or st.last.key is not node:
                st.last = _Ctx(node.name(), "backward", key=node)
            ctx = st.last
        else:
            ctx = st.last
    if ctx is None:
        return "comm", step
    label = f"{ctx.op} ({ctx.phase})"
    if step is None:
        step = ctx.calls
    ctx.calls += 1
    return label, step


# ---- bounded waiting -----------------------------------------------------------------------------

def _is_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


def _wait_polled(work, deadline: float) -> None:
    """Wait for a work whose ``wait(timeout=)`` does not return at the timeout (gloo's tensor
    reduce-scatter blocks until it completes, torch 2.11-2.14): poll ``is_completed()`` until the
    deadline, then ``wait()`` (returns at once, or raises the work's own error)."""
    pause = 0.0
    while not work.is_completed():
        if time.monotonic() >= deadline:
            raise RuntimeError("timed out (polled)")
        time.sleep(pause)
        pause = min(max(2 * pause, 2e-5), 5e-4)
    work.wait()


def wait_bounded(works, *, what: str, op: str, step, info, peers=None, seconds: float | None = None,
                 poll: bool = False) -> None:
    """Wait for ``works`` within ``seconds`` (default: :func:`get_comm_timeout`) in total; raise
    :class:`CommTimeout` if not. ``peers`` are the group ranks of the works, one per work (P2P), or
    ``None`` for a collective (every other rank of ``info``'s group). ``poll``: the works ignore
    ``wait(timeout=)`` (see :func:`_wait_polled`); they are polled instead."""
    seconds = get_comm_timeout() if seconds is None else seconds
    deadline = time.monotonic() + seconds
    for i, w in enumerate(works):
        left = max(deadline - time.monotonic(), 0.001)
        try:
            if poll:
                _wait_polled(w, deadline)
            else:
                w.wait(timeout=datetime.timedelta(seconds=left))
        except RuntimeError as e:
            if not _is_timeout(e):
                raise
            if peers is not None and len(peers) == len(works):
                waited = [peers[i]]
            else:
                waited = sorted(set(peers)) if peers else [r for r in range(info.size) if r != info.rank]
            glob = [info.global_rank(r) for r in waited]
            who = ", ".join(f"rank {g}" for g in glob)
            if peers is None:
                who = f"the other ranks of the collective ({who}; at least one of them is missing)"
            step_txt = "" if step is None else f", step {step}"
            raise CommTimeout(
                f"{op}{step_txt}: timed out after {seconds:.1f} s waiting for the {what} with {who} "
                f"(this is rank {info.global_rank(info.rank)}, {info.describe()}). A rank probably failed or "
                f"skipped this call. The group is now out of step: destroy and re-create it "
                f"(torch.distributed.destroy_process_group(group) / new_group) or restart the job (torchrun); "
                f"if the peer is only slow, raise the bound with ok.comm_timeout(seconds) or {_ENV}.",
                op=op, step=step, peers=glob, seconds=seconds) from e


__all__ = ["CommTimeout", "comm_timeout", "current_context", "get_comm_timeout", "note_checked", "op_context",
           "set_comm_timeout", "wait_bounded"]
