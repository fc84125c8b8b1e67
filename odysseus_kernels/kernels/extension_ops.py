"""Python side of the compiled extension ``odysseus_kernels._C`` (``csrc/``).

The ops live in ``torch.ops.odysseus_kernels`` (schemas in ``csrc/ops.cpp``, CPU and CUDA kernels in
``csrc/<op>.cpp`` and ``csrc/cuda/<op>.cu``). This module registers what torch needs from Python
(fake kernels for ``torch.compile``, autograd for the state scan) and wraps the ops:

* :func:`merge_attention_states_` - in-place online-softmax merge (every ring-attention step);
* :func:`linear_attention_state_scan` - LASP-2's exclusive prefix/suffix of per-rank states;
* :func:`signal` / :func:`wait` and :class:`ChunkSignals` - stream-ordered 32-bit flags, so a
  consumer stream (a GEMM) waits on "chunk i arrived" written by the communication stream, without
  the host.

Every wrapper needs the extension (``odysseus_kernels.extension_available()``) and raises an
actionable ``RuntimeError`` without it; callers with a Python/Triton path check availability first.
The C++ ops raise ``ValueError`` / ``TypeError`` naming the bad argument.
"""
from __future__ import annotations

import torch

from .._extension_loader import extension_available, extension_has_cuda, when_loaded

_NS = "odysseus_kernels"
_registered = False


def _require(name: str) -> None:
    if not extension_available():
        raise RuntimeError(
            f"{name} needs the compiled extension odysseus_kernels._C, which is not available; reinstall with "
            "`pip install --no-build-isolation -e .` (a C++ compiler, and nvcc for the CUDA kernels) and without "
            "ODYSSEUS_KERNELS_BUILD_EXT=0")


# --------------------------------------------------------------------------- merge_attention_states_

def merge_attention_states_(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor,
                            block_lse: torch.Tensor) -> None:
    """In place: merge a block's partial attention ``(block_out, block_lse)`` into ``(out, lse)``.

    ``new_lse = logaddexp(lse, block_lse)``, ``out = exp(lse - new_lse) * out + exp(block_lse - new_lse)
    * block_out``, ``lse = new_lse``, in the accumulators' precision. A side with lse = -inf (saw no
    key) has weight exactly 0 and its ``out`` values are not used (they may be uninitialised); when
    both are -inf the row is left unchanged and lse stays -inf. Never NaN from -inf rows.

    Args:
        out: ``[B, S, H, D]`` float32 (or float64) running output, updated in place. Any strides.
        lse: ``[B, H, S]`` same dtype, running log-sum-exp, updated in place.
        block_out: ``[B, S, H, D]`` in ``out``'s dtype, float16 or bfloat16.
        block_lse: ``[B, H, S]`` in ``out``'s dtype.
    Returns:
        None (``out`` and ``lse`` hold the merge).

    Example:
        >>> out, lse = torch.zeros(1, 63, 4, 24), torch.full((1, 4, 63), float("-inf"))
        >>> merge_attention_states_(out, lse, block_out, block_lse)  # block_* from a block forward
    """
    _require("merge_attention_states_")
    torch.ops.odysseus_kernels.merge_attention_states_(out, lse, block_out, block_lse)


def _check_merge(out, lse, block_out, block_lse) -> None:
    # Same rules as check_merge_args in csrc/merge_attention.cpp, for tracing with fake tensors.
    if out.dim() != 4:
        raise ValueError(f"merge_attention_states_: out must be [batch, seq, heads, head_dim], got {tuple(out.shape)}")
    b, s, h, _ = out.shape
    if tuple(lse.shape) != (b, h, s):
        raise ValueError(f"merge_attention_states_: lse must be [batch, heads, seq] = {(b, h, s)}, "
                         f"got {tuple(lse.shape)}")
    if block_out.shape != out.shape:
        raise ValueError(f"merge_attention_states_: block_out must have out's shape {tuple(out.shape)}, "
                         f"got {tuple(block_out.shape)}")
    if block_lse.shape != lse.shape:
        raise ValueError(f"merge_attention_states_: block_lse must have lse's shape {tuple(lse.shape)}, "
                         f"got {tuple(block_lse.shape)}")
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"merge_attention_states_: out must be float32 (or float64), got {out.dtype}")
    if lse.dtype != out.dtype or block_lse.dtype != out.dtype:
        raise TypeError(f"merge_attention_states_: lse and block_lse must have out's dtype {out.dtype}, "
                        f"got {lse.dtype} and {block_lse.dtype}")
    if block_out.dtype not in (out.dtype, torch.float16, torch.bfloat16):
        raise TypeError(f"merge_attention_states_: block_out must be {out.dtype}, float16 or bfloat16, "
                        f"got {block_out.dtype}")


# --------------------------------------------------------------------------- linear_attention_state_scan

def linear_attention_state_scan(states: torch.Tensor, log_decay: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Exclusive decayed prefix (or suffix) over the world of per-rank linear-attention states.

    With ``a = exp(log_decay[h])`` and ``M_t = states[t]``:
    ``reverse=False``: ``out[t] = sum_{j<t} a^(t-1-j) M_j`` (what rank t's chunk sees from earlier ranks);
    ``reverse=True``: ``out[t] = sum_{j>t} a^(j-1-t) M_j`` (LASP-2's backward combination of dS).
    Differentiable w.r.t. ``states`` (the backward is the opposite-direction scan) and ``log_decay``.

    Args:
        states: ``[W, B, H, d_k, d_v]`` float32 (or float64), one state per rank (AllGathered).
        log_decay: ``[H]`` floating, the log-decay of one whole rank chunk (0 = no decay).
        reverse: suffix instead of prefix.
    Returns:
        ``[W, B, H, d_k, d_v]`` contiguous, ``states.dtype``; ``out[0]`` (``out[W-1]`` if reverse) is 0.

    Example:
        >>> states = torch.randn(4, 2, 8, 64, 64)  # 4 ranks
        >>> prefix = linear_attention_state_scan(states, torch.full((8,), -0.5))
    """
    _require("linear_attention_state_scan")
    return torch.ops.odysseus_kernels.linear_attention_state_scan(states, log_decay, reverse)


def _check_scan(states, log_decay) -> None:
    if states.dim() != 5:
        raise ValueError("linear_attention_state_scan: states must be [world, batch, heads, d_k, d_v], "
                         f"got {tuple(states.shape)}")
    if states.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"linear_attention_state_scan: states must be float32 (or float64), got {states.dtype}")
    if log_decay.dim() != 1 or log_decay.shape[0] != states.shape[2]:
        raise ValueError(f"linear_attention_state_scan: log_decay must be [heads] = [{states.shape[2]}], "
                         f"got {tuple(log_decay.shape)}")
    if not log_decay.dtype.is_floating_point:
        raise TypeError(f"linear_attention_state_scan: log_decay must be floating point, got {log_decay.dtype}")


def _scan_log_decay_grad(grad, states, log_decay, reverse):
    """d(sum <grad, out>) / d log_decay[h] = sum_{t,j} c^(n) n <grad_t, M_j> over the pairs in the sum,
    n = t-1-j (forward) or j-1-t (reverse): a [W, W] table per head, fine for world sizes."""
    w = states.shape[0]
    t = torch.arange(w, device=states.device)
    n = (t.view(-1, 1) - t.view(1, -1) - 1) if not reverse else (t.view(1, -1) - t.view(-1, 1) - 1)  # [t, j]
    n = n.to(states.dtype)
    ld = log_decay.to(states.dtype).view(-1, 1, 1)  # [H, 1, 1]
    coef = torch.where(n > 0, n * torch.exp(n * ld), torch.zeros((), dtype=states.dtype, device=states.device))
    dots = torch.einsum("tbhkv,jbhkv->htj", grad.to(states.dtype), states)  # [H, W, W]
    return (coef * dots).sum((1, 2)).to(log_decay.dtype)


def _scan_setup_context(ctx, inputs, output):
    states, log_decay, reverse = inputs
    ctx.reverse = reverse
    ctx.save_for_backward(states if ctx.needs_input_grad[1] else None, log_decay)


def _scan_backward(ctx, grad):
    states, log_decay = ctx.saved_tensors
    grad_states = grad_log_decay = None
    if ctx.needs_input_grad[0]:
        # out = L M with L strictly lower (upper if reverse) triangular: dM = L^T grad, the other direction.
        grad_states = torch.ops.odysseus_kernels.linear_attention_state_scan(grad, log_decay, not ctx.reverse)
    if ctx.needs_input_grad[1]:
        grad_log_decay = _scan_log_decay_grad(grad, states, log_decay, ctx.reverse)
    return grad_states, grad_log_decay, None


# --------------------------------------------------------------------------- stream-ordered flags

def signal(flag: torch.Tensor, value: int) -> None:
    """Write ``value`` into ``flag`` at this point of the current stream.

    CUDA: ``cuStreamWriteValue32`` on ``torch.cuda.current_stream()``; the store happens after all
    work enqueued on the stream before it (with a memory barrier: a consumer that sees the flag sees
    that work's writes). CPU: a release store, now. Under ``torch.compile`` the flag ops keep their
    order among themselves but not relative to the data they guard (see :func:`_register`).

    Args:
        flag: one-element int32 tensor (e.g. ``flags[i]`` of a flags vector), on the stream's device.
        value: int32.
    Example:
        >>> with torch.cuda.stream(comm_stream):
        ...     recv_chunk(i); signal(flags[i], round)
    """
    _require("signal")
    torch.ops.odysseus_kernels.stream_write_value32_(flag, value)


def wait(flag: torch.Tensor, value: int, *, equal: bool = False) -> None:
    """Make later work on the current stream wait until ``flag >= value`` (or ``flag == value``).

    ``>=`` is in wrap-around order, ``(int32)(flag - value) >= 0``, so counters may wrap. CUDA:
    ``cuStreamWaitValue32`` on ``torch.cuda.current_stream()``; the host does not block. A wait
    enqueued before its :func:`signal` relies on what CUDA does not guarantee (forward progress of
    the other stream while this one is blocked): the producer's stream on a hardware queue of its
    own (not so with ``CUDA_DEVICE_MAX_CONNECTIONS=1``, or more busy streams than queues) and the
    producer's kernels already loaded (lazy module loading, the default, loads a kernel at its
    first launch and may need the blocked context to synchronise). Otherwise the GPU deadlocks:
    enqueue the signal first, or launch the producer's kernels once before queueing the wait.
    CPU: ops run in program order, so an unsatisfied wait raises ``RuntimeError`` instead of
    hanging.

    Args:
        flag: one-element int32 tensor. value: int32. equal: wait for equality instead of ``>=``.
    Example:
        >>> with torch.cuda.stream(compute_stream):
        ...     wait(flags[i], round); y = x_chunk[i] @ w
    """
    _require("wait")
    torch.ops.odysseus_kernels.stream_wait_value32(flag, value, equal)


def _check_flag(flag, op) -> None:
    if flag.dtype != torch.int32:
        raise TypeError(f"{op}: flag must be int32, got {flag.dtype}")
    if flag.numel() != 1:
        raise ValueError(f"{op}: flag must have exactly one element, got shape {tuple(flag.shape)}")


class ChunkSignals:
    """Per-chunk "arrived" flags between a producer stream (communication) and consumer streams.

    ``flags[i]`` holds the round in which chunk ``i`` last arrived. Each use of the pipeline is a
    round: :meth:`next_round` (host only, no GPU work), then the producer calls :meth:`arrived` after
    enqueueing chunk ``i``'s transfer on its stream, and the consumer calls :meth:`wait` before
    enqueueing the work that reads chunk ``i``. Flags from an older round never satisfy a wait.

    Backends: ``"memop"`` (driver stream memory operations through the extension; the wait may be
    enqueued before the matching ``arrived``, with the caveats of :func:`wait`), ``"event"`` (one CUDA
    event per chunk: ``arrived(i)`` must be called on the host before ``wait(i)``; checked),
    ``"auto"``: memop when the extension is available (with its CUDA kernels, on CUDA), else event on
    CUDA; on CPU, flags written and checked in program order.

    Args:
        num_chunks: number of chunks per round.
        device: device of the flags (the streams' device).
        backend: ``"auto"`` | ``"memop"`` | ``"event"``.
    Example:
        >>> sig = ChunkSignals(world, device)
        >>> sig.next_round()
        >>> for i in range(world):
        ...     with torch.cuda.stream(comm):
        ...         recv(bufs[i]); sig.arrived(i)
        >>> for i in range(world):
        ...     sig.wait(i); out[i] = bufs[i] @ w   # current (compute) stream
    """

    def __init__(self, num_chunks: int, device=None, backend: str = "auto"):
        if backend not in ("auto", "memop", "event"):
            raise ValueError(f"ChunkSignals: backend must be 'auto', 'memop' or 'event', got {backend!r}")
        if num_chunks < 1:
            raise ValueError(f"ChunkSignals: num_chunks must be >= 1, got {num_chunks}")
        self.device = torch.device(device if device is not None else "cpu")
        if backend == "auto":
            memop = extension_has_cuda() if self.device.type == "cuda" else extension_available()
            backend = "memop" if memop else "event"
        if backend == "memop":
            _require("ChunkSignals(backend='memop')")
        if backend == "event" and self.device.type == "cpu":
            backend = "program_order"  # no streams: a plain flag store/check
        self.backend = backend
        self.num_chunks = num_chunks
        self.round = 0
        self.flags = torch.zeros(num_chunks, dtype=torch.int32, device=self.device)
        self._zeroed = None  # CUDA: the zero fill's event, on the stream it was enqueued on (see _use)
        if self.device.type == "cuda":
            self._zeroed = torch.cuda.Event()
            self._zeroed.record(torch.cuda.current_stream(self.device))
        self._events = [torch.cuda.Event() for _ in range(num_chunks)] if backend == "event" else None
        self._recorded = [0] * num_chunks  # event backend: the round each event was last recorded in
        self._streams = set()  # streams the flags were used on (for the caching allocator)

    def next_round(self) -> int:
        """Start a round (host only); returns its number (int32, wraps around, never 0)."""
        self.round = (self.round + 1 + 2**31) % 2**32 - 2**31 or 1
        return self.round

    def _use(self, i: int) -> torch.Tensor:
        if self.round == 0:
            raise RuntimeError("ChunkSignals: call next_round() before arrived()/wait()")
        if not 0 <= i < self.num_chunks:
            raise IndexError(f"ChunkSignals: chunk must be in [0, {self.num_chunks}), got {i}")
        if self.device.type == "cuda":
            # Once per stream that uses the flags: wait for their zero fill (enqueued on the constructing
            # stream, it could land after a producer's store and erase it: the consumer's wait would
            # never return), and tell the caching allocator, so their memory outlives that pending work.
            stream = torch.cuda.current_stream(self.device)
            if stream.cuda_stream not in self._streams:
                self._streams.add(stream.cuda_stream)
                stream.wait_event(self._zeroed)
                self.flags.record_stream(stream)
        return self.flags[i]

    def arrived(self, i: int) -> None:
        """Mark chunk ``i`` arrived, after the work already enqueued on the current stream."""
        flag = self._use(i)
        if self.backend == "memop":
            signal(flag, self.round)
        elif self.backend == "event":
            self._events[i].record()
            self._recorded[i] = self.round
        else:
            flag.fill_(self.round)

    def wait(self, i: int) -> None:
        """Make later work on the current stream wait until chunk ``i`` arrived in this round."""
        flag = self._use(i)
        if self.backend == "memop":
            wait(flag, self.round)
        elif self.backend == "event":
            if self._recorded[i] != self.round:
                raise RuntimeError(f"ChunkSignals(backend='event'): wait({i}) before arrived({i}) in round "
                                   f"{self.round}; events need the producer enqueued first (or use 'memop')")
            torch.cuda.current_stream(self.device).wait_event(self._events[i])
        elif int(flag) != self.round:
            raise RuntimeError(f"ChunkSignals: wait({i}) before arrived({i}) in round {self.round} would never "
                               "return on CPU (program order)")


# --------------------------------------------------------------------------- registration

def _library_loaded() -> bool:
    try:
        torch.ops.odysseus_kernels.merge_attention_states_
    except (AttributeError, RuntimeError):
        return False
    return True


def _register() -> None:
    """Fake kernels (shape/dtype rules for ``torch.compile``) and autograd of the ops; idempotent.

    The flag ops' effects order them among themselves only: functionalisation sees no dependency
    between a flag and the data it guards (a copy before :func:`signal`, a read after :func:`wait`), so
    a compiled graph may move that data's ops across them. Where that order matters, call the flag ops
    under ``torch.compiler.disable``: the graph break runs what precedes them first and what follows
    after.

    Called by ``odysseus_kernels._extension_loader`` once ``_C`` is loaded, and at import of this module when
    the library is already loaded (e.g. by ``torch.ops.load_library``; ``csrc/ops.cpp`` names this
    module with ``set_python_module``, so torch's error says to import it).
    """
    global _registered
    if _registered or not _library_loaded():
        return
    _registered = True

    @torch.library.register_fake(f"{_NS}::merge_attention_states_")
    def _(out, lse, block_out, block_lse):
        _check_merge(out, lse, block_out, block_lse)

    @torch.library.register_fake(f"{_NS}::linear_attention_state_scan")
    def _(states, log_decay, reverse):
        _check_scan(states, log_decay)
        return states.new_empty(states.shape)

    torch.library.register_autograd(f"{_NS}::linear_attention_state_scan", _scan_backward,
                                    setup_context=_scan_setup_context)

    @torch.library.register_fake(f"{_NS}::stream_write_value32_")
    def _(flag, value):
        _check_flag(flag, "stream_write_value32_")

    @torch.library.register_fake(f"{_NS}::stream_wait_value32")
    def _(flag, value, equal=False):
        _check_flag(flag, "stream_wait_value32")

    # The wait returns nothing and mutates nothing, so torch.compile would drop it as dead code;
    # ORDERED effects keep both flag ops, in program order relative to each other.
    try:
        from torch._library.effects import EffectType

        for name in ("stream_write_value32_", "stream_wait_value32"):
            torch.library._register_effectful_op(f"{_NS}::{name}", EffectType.ORDERED)
    except (ImportError, AttributeError):  # older torch: only keep the wait alive
        torch.fx.node.has_side_effect(torch.ops.odysseus_kernels.stream_wait_value32.default)


_register()
when_loaded(_register)
