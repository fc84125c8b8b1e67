"""The fused schedules (``impl="fused"``): one persistent Triton GEMM per op (kernels/gemm), fed or
drained by the communication stream through per-piece int32 flags in device memory.

Who waits on what (one op on one rank, N ranks; ``e`` the op's epoch, flags are never reset)::

    AG-GEMM   compute stream: copy own shard -> gathered[rank]; [record]; persistent GEMM (grid capped
              at SMs - margin) walks tiles in arrival order: piece 0 (own shard, no wait), piece 1
              (rank-1's shard), ...; before loading a tile's rows it spins (acquire) on
              flags_ag[j] - e >= 0 for every piece j the tile touches; then waits for the comm stream.
              comm stream: waits for [record]; for t = 1..N-1: ring P2P (send piece t-1 to next,
              receive rank-t's shard from prev straight into gathered[rank-t]), wait for it, then
              write flags_ag[t] = e (cuStreamWriteValue32: after the transfer, with a memory barrier;
              without the extension a one-element fill kernel on the same stream).
    GEMM-RS   compute stream: [record]; persistent GEMM writes the partial products chunk by chunk
              (chunk c = rows slice c of every destination's rows, in a chunk-major buffer); the
              tile that finishes chunk c (a per-chunk tile counter) writes flags_rs[c] = e (release).
              comm stream: waits for [record]; for each chunk c: cuStreamWaitValue32(flags_rs[c] >= e)
              (without the extension: an event after the whole GEMM, no overlap), then NCCL
              reduce-scatter of chunk c; the compute stream waits for the reduce-scatters at the end.

Deadlock freedom: the AG GEMM only waits on the comm stream, which never waits on the GEMM; the grid
leaves ``margin`` SMs for NCCL's kernels (a spinning GEMM that fills every SM would starve them). The
GEMM-RS comm waits are enqueued *after* the GEMM (with ``CUDA_DEVICE_MAX_CONNECTIONS=1`` every stream
shares one hardware queue: a wait queued first would block the GEMM behind it). Epochs increase per
op on a device (int32, compared in wrap-around order), so flags need no reset between ops; ops on
one device run one at a time in stream order (flags are per device).

On CPU the same kernel runs under the Triton interpreter (``TRITON_INTERPRET=1``), sequentially: the
host writes each flag as its piece arrives (gloo) and launches the GEMM once every piece is in (with a
bounded spin: a missing flag raises instead of hanging); the GEMM-RS flags are checked by the host
before each chunk is reduce-scattered.
"""
from __future__ import annotations

import os

import torch

from ...comm import GroupInfo, comm_stream, exchange, reduce_scatter_async
from ...kernels.device_cache import DeviceCache
from ...kernels.gemm import RowMap, Signal, Wait, persistent_gemm
from ...kernels.gemm.persistent import INTERPRET
from ..ring import Rotation
from .pipeline import row_slices

# SMs left to the communication kernels while the persistent GEMM runs (NCCL's ring/P2P kernels use
# one CTA per channel). A reasoned default, unmeasured: override with ODYSSEUS_GEMM_SM_MARGIN.
SM_MARGIN = int(os.environ.get("ODYSSEUS_GEMM_SM_MARGIN", "8"))
DEFAULT_RS_CHUNKS = 4
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def fused_supported(device: torch.device) -> str | None:
    """``None`` when ``impl="fused"`` can run on ``device``, else why not."""
    if device.type == "cuda":
        return None
    if not INTERPRET:
        return ("impl='fused' on CPU runs the Triton kernel in the interpreter: set TRITON_INTERPRET=1 before "
                "importing triton (or use impl='ring'/'chunked'/'plain')")
    return None


class _Flags:
    """Per-device flag vectors (AG: written by the comm stream; RS: written by the GEMM), RS tile
    counters (zero between launches) and the epoch counter."""

    def __init__(self, device: torch.device):
        self.device, self.epoch, self.cap, self.retired = device, 0, 0, []
        self._grow(64)

    def _grow(self, cap: int) -> None:
        # new buffers start at 0 < every epoch in use (epochs start at 1 and only grow until wrap); the old
        # ones stay allocated: a CUDA graph captured before the growth (one rank) still reads and writes them
        if self.cap:
            self.retired.append((self.ag, self.rs, self.counters))
        self.ag = torch.zeros(cap, dtype=torch.int32, device=self.device)
        self.rs = torch.zeros(cap, dtype=torch.int32, device=self.device)
        self.counters = torch.zeros(cap, dtype=torch.int32, device=self.device)
        self.cap = cap

    def next_epoch(self, pieces: int) -> int:
        if pieces > self.cap:  # the old buffers stay allocated (in-flight launches may still use them): no sync
            self._grow(max(pieces, 2 * self.cap))
        self.epoch = self.epoch + 1 if self.epoch < 2 ** 31 - 1 else -2 ** 31 + 1
        if self.epoch == 0:
            self.epoch = 1
        return self.epoch


_FLAGS: dict = {}


def flags_for(device: torch.device) -> _Flags:
    key = (device.type, device.index if device.index is not None else
           (torch.cuda.current_device() if device.type == "cuda" else 0))
    if key not in _FLAGS:
        _FLAGS[key] = _Flags(device)
    return _FLAGS[key]


def _signal(flag: torch.Tensor, epoch: int) -> None:
    """``flag = epoch`` after the work enqueued on the current stream."""
    from ..._extension_loader import extension_has_cuda

    if flag.is_cuda and extension_has_cuda():
        torch.ops.odysseus_kernels.stream_write_value32_(flag, epoch)
    else:
        flag.fill_(epoch)


def _build_ag_rows(p: int, n: int, r: int, rank: int, device: torch.device) -> RowMap:
    v = torch.arange(n * p * r, device=device)
    j, rem = v // (p * r), v % (p * r)
    pp, rr = rem // r, rem % r
    src = (rank - j) % n
    return RowMap((src * p * r + pp * r + rr).int(), (pp * n * r + src * r + rr).int(), j.int(), n)


def _build_rs_rows(p: int, n: int, r: int, chunks: tuple, device: torch.device) -> RowMap:
    a_rows, piece = [], []
    for c, (start, stop) in enumerate(chunks):
        rc = stop - start
        v = torch.arange(n * p * rc, device=device)
        nn, rem = v // (p * rc), v % (p * rc)
        pp, rr = rem // rc, rem % rc + start
        a_rows.append(pp * n * r + nn * r + rr)
        piece.append(torch.full_like(v, c))
    a = torch.cat(a_rows)
    return RowMap(a.int(), torch.arange(a.numel(), device=device).int(), torch.cat(piece).int(), len(chunks))


# the GEMMs' row maps, built on the device once per shape (what a CUDA graph capture used is kept for good)
_ag_rows = DeviceCache(_build_ag_rows, maxsize=64)
_rs_rows = DeviceCache(_build_rs_rows, maxsize=64)


def all_gather_gemm(xv: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, info: GroupInfo,
                    y4: torch.Tensor, *, margin: int = SM_MARGIN) -> torch.Tensor:
    """``y4 [P, N, R, o] = AG(xv [P, R, d]) @ w^T + bias`` (``w [o, d]``, any strides); returns the
    gathered input ``[N, P, R, d]``."""
    p, r, d = xv.shape
    n, rank = info.size, info.rank
    gathered = xv.new_empty((n, p, r, d))
    ring = Rotation(info, xv, gathered=gathered)  # copies xv to gathered[rank]; piece t lands in gathered[rank - t]
    st = flags_for(xv.device)
    e = st.next_epoch(n)
    rows = _ag_rows(p, n, r, rank, xv.device)
    a2, out2 = gathered.view(n * p * r, d), y4.view(p * n * r, y4.shape[-1])
    if xv.is_cuda:
        cur, cs = torch.cuda.current_stream(xv.device), comm_stream(xv.device)
        cs.wait_stream(cur)
        with torch.cuda.stream(cs):
            for t in range(1, n):
                h = exchange(*ring.fetch(t), group=info)
                h.wait()  # the comm stream waits for the transfer
                _signal(st.ag[t:t + 1], e)
        persistent_gemm(a2, w, bias, out=out2, rows=rows, wait=Wait(st.ag, e), margin=margin)
        cur.wait_stream(cs)
        return gathered
    for t in range(1, n):  # the host path: each flag written as its piece arrives
        exchange(*ring.fetch(t), group=info).wait()
        st.ag[t] = e
    errors = torch.zeros(n, dtype=torch.int32)
    persistent_gemm(a2, w, bias, out=out2, rows=rows, wait=Wait(st.ag, e, spin_limit=1, errors=errors))
    if errors.any():
        raise RuntimeError(f"all_gather_linear: fused GEMM found pieces not flagged: {errors.tolist()}")
    return gathered


def gemm_reduce_scatter(x4: torch.Tensor, w: torch.Tensor, info: GroupInfo, out_dtype: torch.dtype, *,
                        chunks: int | None = None, margin: int = SM_MARGIN) -> torch.Tensor:
    """``RS(x4 [P, N, R, k] @ w^T)`` (``w [o, k]``, any strides) -> ``[P, R, o]`` in ``out_dtype``:
    partials accumulated in fp32 inside the GEMM, stored and reduce-scattered in ``out_dtype``."""
    p, n, r, k = x4.shape
    o = w.shape[0]
    slices = row_slices(r, chunks or DEFAULT_RS_CHUNKS)
    bounds = tuple((s.start, s.stop) for s in slices)
    rows = _rs_rows(p, n, r, bounds, x4.device)
    st = flags_for(x4.device)
    e = st.next_epoch(len(slices))
    part = x4.new_empty((n * p * r, o), dtype=out_dtype)
    out = x4.new_empty((p, r, o), dtype=out_dtype)
    a2 = x4.reshape(p * n * r, k)
    sig = Signal(st.rs, st.counters, e)
    posted = []

    # Receive buffers are made here, on the caller's stream, before any is written on the comm stream.
    targets = [out[:, start:stop] for start, stop in bounds]
    bufs = [t if t.is_contiguous() else out.new_empty(t.shape) for t in targets]

    def post(c, start, stop):
        seg = part[n * p * start:n * p * stop]
        posted.append((targets[c], bufs[c], reduce_scatter_async(bufs[c].view(p * (stop - start), o), seg,
                                                                 group=info)))

    if x4.is_cuda and n == 1:  # nothing to overlap: the chunks' copies follow the GEMM on this stream
        persistent_gemm(a2, w, None, out=part, rows=rows, signal=sig, margin=margin)
        for c, (start, stop) in enumerate(bounds):
            post(c, start, stop)
    elif x4.is_cuda:
        from ..._extension_loader import extension_has_cuda

        cur, cs = torch.cuda.current_stream(x4.device), comm_stream(x4.device)
        ready = torch.cuda.Event()
        ready.record(cur)
        persistent_gemm(a2, w, None, out=part, rows=rows, signal=sig, margin=margin)
        memop = extension_has_cuda()
        if not memop:
            done = torch.cuda.Event()
            done.record(cur)
        with torch.cuda.stream(cs):
            cs.wait_event(ready)
            if not memop:
                cs.wait_event(done)
            for c, (start, stop) in enumerate(bounds):
                if memop:
                    torch.ops.odysseus_kernels.stream_wait_value32(st.rs[c:c + 1], e, False)
                post(c, start, stop)
        cur.wait_stream(cs)  # whatever the comm stream did (its waits, the collectives' launches) comes first
    else:
        persistent_gemm(a2, w, None, out=part, rows=rows, signal=sig)
        for c, (start, stop) in enumerate(bounds):
            if int(st.rs[c]) != e:  # the host is the comm "stream": the chunk's flag must be set
                raise RuntimeError(f"linear_reduce_scatter: chunk {c} not flagged by the fused GEMM")
            post(c, start, stop)
    for tgt, buf, h in posted:
        h.wait()
        if buf is not tgt:
            tgt.copy_(buf)
    return out
