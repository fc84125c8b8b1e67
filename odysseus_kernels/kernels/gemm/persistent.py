"""One persistent Triton GEMM, ``c = a @ w^T (+ bias)``, that can wait on per-piece flags before
loading a tile's rows (AllGather-GEMM) and can mark finished row chunks with flags (GEMM-ReduceScatter).

The kernel (:func:`_gemm_kernel`) runs ``num_progs`` programs (a grid capped below the SM count, see
:mod:`.configs`); program ``pid`` walks tiles ``pid, pid + num_progs, ...`` in a grouped order
(``GROUP_M`` row blocks per group, for L2 reuse of the weight columns), accumulates in fp32 and stores
in the output's dtype. Rows are *virtual*: with ``INDEXED`` the tile's rows ``v`` are read from row
``a_rows[v]`` of ``a`` and written to row ``c_rows[v]`` of ``c`` (a permutation chosen by the op, so
the tile order is the order in which pieces arrive or chunks leave), and ``piece_of[v]`` is the piece
(arrival or departure unit) that row belongs to; ``piece_of`` is non-decreasing in ``v``.

- ``WAIT`` (AG-GEMM): before loading a tile, for each piece ``p > 0`` the tile's rows touch, one thread
  spins on an acquire load of ``flags[p]`` until ``flags[p] - epoch >= 0`` (int32, wrap-around order,
  the order of ``cuStreamWaitValue32``'s GEQ); a CTA barrier then releases the other threads. Piece 0
  is the local shard: never waited. ``spin_limit > 0`` bounds the spin (tests; a deadlock detector):
  a piece still not ready then counts ``errors[p] += 1`` and the tile is computed but not stored.
- ``SIGNAL`` (GEMM-RS): after storing a tile, a CTA barrier, then one release-ordered atomic increment
  of ``counters[p]`` per piece the tile touches; the tile that brings it to ``expected[p]`` resets the
  counter to 0 and writes ``flags[p] = epoch`` (release): every tile of chunk ``p`` is stored.

The kernel never communicates: flags are written by the communication stream (``WAIT``) or read by it
(``SIGNAL``); see :mod:`odysseus_kernels.ops.tp_gemm.fused`.
"""
from __future__ import annotations

import os
import functools
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from ..backend import cdiv
from ..launch import prepared
from .configs import GemmConfig, pick

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# The epoch changes every launch and the spin bound / program count are not shape properties: never
# specialized (a value of 1 or a multiple of 16 would otherwise compile another variant mid-run).
@triton.jit(do_not_specialize=["epoch", "spin_limit", "num_progs"])
def _gemm_kernel(a_ptr, w_ptr, bias_ptr, c_ptr, a_rows, c_rows, piece_of, flags, counters, expected, errors,
                 M, N, K, stride_am, stride_ak, stride_wn, stride_wk, stride_cm, stride_cn,
                 epoch, spin_limit, num_progs,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                 HAS_BIAS: tl.constexpr, INDEXED: tl.constexpr, WAIT: tl.constexpr, SIGNAL: tl.constexpr,
                 PRECISION: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    num_in_group = GROUP_M * num_pid_n
    offs_k = tl.arange(0, BLOCK_K)
    for tile in range(pid, num_tiles, num_progs):
        group = tile // num_in_group
        first_m = group * GROUP_M
        group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % num_in_group) % group_size
        pid_n = (tile % num_in_group) // group_size
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        last_row = tl.minimum(pid_m * BLOCK_M + BLOCK_M, M) - 1
        ready = 1
        if WAIT:
            p_first = tl.load(piece_of + pid_m * BLOCK_M)
            p_last = tl.load(piece_of + last_row)
            for p in range(p_first, p_last + 1):
                if p > 0:
                    f = tl.atomic_add(flags + p, 0, sem="acquire")
                    spins = 0
                    while ((f - epoch) < 0) & ((spin_limit == 0) | (spins < spin_limit)):
                        f = tl.atomic_add(flags + p, 0, sem="acquire")
                        spins += 1
                    if (f - epoch) < 0:
                        tl.atomic_add(errors + p, 1)
                        ready = 0
            tl.debug_barrier()
        if INDEXED:
            ra = tl.load(a_rows + offs_m, mask=mask_m, other=0).to(tl.int64)
            rc = tl.load(c_rows + offs_m, mask=mask_m, other=0).to(tl.int64)
        else:
            ra = (offs_m % M).to(tl.int64)
            rc = offs_m.to(tl.int64)
        # rows of a wrap (% M: in bounds, never stored); columns of w are masked instead, so an N-major
        # weight (unit stride along N) keeps its vectorized, pipelined loads when N % 16 == 0
        a_p = a_ptr + ra[:, None] * stride_am + offs_k[None, :] * stride_ak
        w_p = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in tl.range(0, tl.cdiv(K, BLOCK_K), num_stages=STAGES):
            k_left = K - k * BLOCK_K
            a = tl.load(a_p, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(w_p, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            a_p += BLOCK_K * stride_ak
            w_p += BLOCK_K * stride_wk
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        c_p = c_ptr + rc[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_p, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :] & (ready != 0))
        if SIGNAL:
            tl.debug_barrier()  # every thread's stores of this tile precede the release below
            p_first = tl.load(piece_of + pid_m * BLOCK_M)
            p_last = tl.load(piece_of + last_row)
            for p in range(p_first, p_last + 1):
                done = tl.atomic_add(counters + p, 1, sem="acq_rel") + 1
                if done == tl.load(expected + p):
                    tl.atomic_xchg(counters + p, 0, sem="relaxed")
                    tl.atomic_xchg(flags + p, epoch, sem="release")


@dataclass
class RowMap:
    """Virtual rows of an indexed GEMM: ``a_rows``/``c_rows``/``piece_of`` int32 ``[M]`` on the device;
    ``num_pieces`` pieces; ``piece_of`` non-decreasing."""

    a_rows: torch.Tensor
    c_rows: torch.Tensor
    piece_of: torch.Tensor
    num_pieces: int
    _expected: dict = field(default_factory=dict, repr=False)

    def expected_tiles(self, block_m: int, block_n_tiles: int) -> torch.Tensor:
        """Tiles touching each piece (``SIGNAL``'s targets), int32 ``[num_pieces]`` (cached)."""
        key = (block_m, block_n_tiles)
        if key not in self._expected:
            self._expected[key] = self._expected_tiles(block_m, block_n_tiles)
        return self._expected[key]

    def _expected_tiles(self, block_m: int, block_n_tiles: int) -> torch.Tensor:
        m = self.piece_of.numel()
        starts = torch.arange(0, m, block_m, device=self.piece_of.device)
        first = self.piece_of[starts].long()
        last = self.piece_of[torch.clamp(starts + block_m - 1, max=m - 1)].long()
        cnt = torch.zeros(self.num_pieces + 1, dtype=torch.long, device=self.piece_of.device)
        cnt.index_add_(0, first, torch.ones_like(first))
        cnt.index_add_(0, last + 1, -torch.ones_like(last))
        return (cnt.cumsum(0)[:-1] * block_n_tiles).to(torch.int32)


@dataclass
class Wait:
    """``WAIT`` mode: ``flags`` int32 (index = piece), ``epoch``; ``spin_limit`` 0 = unbounded;
    ``errors`` int32 ``[num_pieces]`` counts the tiles that gave up (only with a bound)."""

    flags: torch.Tensor
    epoch: int
    spin_limit: int = 0
    errors: torch.Tensor | None = None


@dataclass
class Signal:
    """``SIGNAL`` mode: ``flags``/``counters`` int32 (index = piece; counters zero between launches),
    ``expected`` from :meth:`RowMap.expected_tiles` (computed if ``None``), ``epoch``."""

    flags: torch.Tensor
    counters: torch.Tensor
    epoch: int
    expected: torch.Tensor | None = None


@functools.lru_cache(maxsize=None)
def _dummy(device: torch.device) -> torch.Tensor:
    """An int32 placeholder for the pointer arguments a launch mode does not use (never read)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


_DT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DT:
        raise TypeError(f"persistent GEMM: dtype must be float16, bfloat16 or float32, got {dtype}")
    return _DT[dtype]


def device_arch(device: torch.device) -> int:
    """Compute capability as ``90`` / ``80`` (the rows of the config table; 0 under the interpreter)."""
    if device.type != "cuda":
        return 0
    major, minor = torch.cuda.get_device_capability(device)
    return 90 if major >= 9 else 80


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter's "SMs": enough programs to exercise the persistent tile loop
    return torch.cuda.get_device_properties(device).multi_processor_count


def grid_size(tiles: int, device: torch.device, margin: int) -> int:
    """``min(tiles, SMs - margin)`` (at least 1): the SMs left over are for the communication kernels."""
    return max(1, min(tiles, num_sms(device) - max(0, margin)))


def persistent_gemm(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
                    out: torch.Tensor | None = None, rows: RowMap | None = None, wait: Wait | None = None,
                    signal: Signal | None = None, margin: int = 0, config: GemmConfig | None = None) -> torch.Tensor:
    """``out[c_rows[v]] = a[a_rows[v]] @ w^T + bias`` for every virtual row ``v`` (``rows=None``: the
    identity, ``out = a @ w^T + bias``), on the current stream, one launch.

    Args:
        a: ``[M_a, K]`` (any strides), w: ``[N, K]`` (any strides: ``weight`` or ``weight.t()``'s
            transpose), bias: ``[N]`` or ``None``; one dtype (fp16/bf16/fp32), one device.
        out: ``[M_c, N]`` output (any strides; its dtype is the store dtype); required with ``rows``,
            else ``[M_a, N]`` allocated in ``a``'s dtype.
        rows, wait, signal: see :class:`RowMap`, :class:`Wait`, :class:`Signal`.
        margin: SMs left free (grid = ``min(tiles, SMs - margin)``).
        config: a launch config (default: :func:`.configs.pick`).
    """
    if a.dim() != 2 or w.dim() != 2 or a.shape[1] != w.shape[1]:
        raise ValueError(f"persistent_gemm: a [M, K] and w [N, K] expected, got {tuple(a.shape)}, {tuple(w.shape)}")
    if (wait is not None or signal is not None) and rows is None:
        raise ValueError("persistent_gemm: wait/signal need a RowMap (the pieces)")
    if a.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("persistent_gemm: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 set before "
                           "triton is imported)")
    dname = dtype_name(a.dtype)
    # unit strides along K for a (and along K or N for w) are what the compiled variants assume
    if a.stride(1) != 1 and a.shape[1] > 1:
        a = a.contiguous()
    if w.stride(1) != 1 and w.stride(0) != 1:
        w = w.contiguous()
    if out is not None and out.stride(1) != 1 and out.shape[1] > 1:
        if rows is not None:
            raise ValueError("persistent_gemm: with rows, out must have unit stride along its last dim")
        tmp = persistent_gemm(a, w, bias, margin=margin, config=config)
        return out.copy_(tmp)
    n, k = w.shape
    m = a.shape[0] if rows is None else rows.a_rows.numel()
    if out is None:
        if rows is not None:
            raise ValueError("persistent_gemm: out is required with rows")
        out = a.new_empty((m, n))
    cfg = config or pick(device_arch(a.device), dname, m, n, k, "k_major" if w.stride(1) == 1 else "n_major")
    tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
    if m == 0 or n == 0:
        return out
    if wait is not None and signal is not None:
        raise ValueError("persistent_gemm: wait and signal are exclusive (one flags vector per launch)")
    dummy = _dummy(a.device)
    if signal is not None and signal.expected is None:
        signal.expected = rows.expected_tiles(cfg.block_m, cdiv(n, cfg.block_n))
    if k == 0:  # no K tiles: the product is zero (plus bias); a finished chunk is still flagged
        full = bias.to(out.dtype).expand(m, n) if bias is not None else out.new_zeros(()).expand(m, n)
        if rows is None:
            out.copy_(full)
        else:
            out.index_copy_(0, rows.c_rows.long(), full.contiguous())
        if signal is not None:
            signal.flags[:rows.num_pieces].fill_(signal.epoch)
        return out
    grid = grid_size(tiles, a.device, margin)
    prepared(_gemm_kernel, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
             HAS_BIAS=bias is not None, INDEXED=rows is not None, WAIT=wait is not None, SIGNAL=signal is not None,
             PRECISION="ieee" if a.dtype == torch.float32 else "tf32", STAGES=cfg.num_stages,
             num_warps=cfg.num_warps, num_stages=cfg.num_stages)((grid,), (
        a, w, bias if bias is not None else a, out,
        rows.a_rows if rows is not None else dummy, rows.c_rows if rows is not None else dummy,
        rows.piece_of if rows is not None else dummy,
        (wait.flags if wait is not None else signal.flags if signal is not None else dummy),
        signal.counters if signal is not None else dummy, signal.expected if signal is not None else dummy,
        wait.errors if wait is not None and wait.errors is not None else dummy,
        m, n, k, a.stride(0), a.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        (wait.epoch if wait is not None else signal.epoch if signal is not None else 0),
        wait.spin_limit if wait is not None else 0, grid))
    return out
