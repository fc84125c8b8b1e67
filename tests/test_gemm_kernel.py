"""The persistent GEMM (kernels/gemm) under the Triton interpreter on CPU (fp32, fp16; the
interpreter's bf16 dot is wrong): exact against float64 at odd shapes and strides, with and without
bias; indexed rows (gather/scatter); the flag protocol: a tile waits on exactly the pieces its rows
belong to (pieces whose flag is not at the epoch are never stored, counted in ``errors`` with a
bounded spin), the local piece 0 is never waited on, wrap-around epochs; the GEMM-RS side counts
tiles per chunk and flags every chunk once, leaving the counters at zero. The config table and the
gate cases are consistent. GPU runs (a producer stream delivering pieces late) are in
tests/test_tp_gemm_cuda.py."""

import pytest
import torch

from odysseus_kernels.kernels.gemm import RowMap, Signal, Wait, persistent_gemm, pick
from odysseus_kernels.kernels.gemm.gate import gate_cases
from odysseus_kernels.kernels.gemm.configs import INTERPRETER, MODES, TABLE, TABLE_N_MAJOR
from tests.triton_device import INTERPRETING

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or not INTERPRETING,
                                reason="interpreter tests (CPU, TRITON_INTERPRET=1)")
DTYPES = [torch.float32, torch.float16]


def _close(got, ref, dtype):
    """Within one rounding of the output dtype (plus fp32 accumulation error) of the float64 result."""
    eps = {torch.float32: 2e-6, torch.float16: 2 ** -10}[dtype]
    bad = (got.double() - ref).abs() > eps * ref.abs() + eps * 4 * (ref.abs().max() if ref.numel() else 0) * 1e-2 + 1e-6
    return not bool(bad.any())


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", [(37, 23, 29), (1, 5, 3), (16, 16, 16), (50, 33, 48)])
def test_plain_exact_odd_shapes(dtype, shape):
    m, n, k = shape
    g = torch.Generator().manual_seed(m * n + k)
    a = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(k, n, generator=g).to(dtype).t()  # a transposed view (strided)
    b = torch.randn(n, generator=g).to(dtype)
    for bias in (b, None):
        y = persistent_gemm(a, w, bias)
        ref = a.double() @ w.double().t() + (bias.double() if bias is not None else 0)
        assert y.dtype == dtype and y.shape == (m, n) and _close(y, ref, dtype)
    out = torch.full((m, 2 * n), float("nan"), dtype=dtype)[:, ::2]  # strided output
    persistent_gemm(a[:, :k], w, b, out=out)
    assert _close(out, a.double() @ w.double().t() + b.double(), dtype)
    z = persistent_gemm(a[:, :0], w[:, :0], b)  # K = 0: the bias
    assert torch.equal(z, b.expand(m, n))


def _ag_rows(pieces, rows_per_piece, n_cols_out):
    """A permuted layout: virtual row v (piece j = v // rpp) reads a row of piece j's block in reverse
    piece order and writes a scattered row of the output."""
    m = pieces * rows_per_piece
    v = torch.arange(m)
    j, r = v // rows_per_piece, v % rows_per_piece
    a_rows = (pieces - 1 - j) * rows_per_piece + r
    c_rows = r * pieces + j
    return RowMap(a_rows.int(), c_rows.int(), j.int(), pieces)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_wait_reads_only_ready_pieces(dtype):
    pieces, rpp, n, k = 4, 11, 19, 21  # 11 rows per piece: tiles of 16 straddle pieces
    g = torch.Generator().manual_seed(1)
    a = torch.randn(pieces * rpp, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    rows = _ag_rows(pieces, rpp, n)
    ref = torch.empty(pieces * rpp, n, dtype=torch.float64)
    ref[rows.c_rows.long()] = a.double()[rows.a_rows.long()] @ w.double().t()
    epoch = 7
    flags = torch.zeros(pieces, dtype=torch.int32)
    flags[2] = epoch          # piece 1 and 3 not ready; piece 0 (local) needs no flag
    flags[3] = epoch - 1
    errors = torch.zeros(pieces, dtype=torch.int32)
    out = torch.full((pieces * rpp, n), float("nan"), dtype=dtype)
    persistent_gemm(a, w, out=out, rows=rows, wait=Wait(flags, epoch, spin_limit=3, errors=errors))
    piece_of_out = torch.empty(pieces * rpp, dtype=torch.long)
    piece_of_out[rows.c_rows.long()] = rows.piece_of.long()
    # a tile is stored only if every piece it touches is ready: rows of tiles touching 1 or 3 stay NaN
    tile_ok = {}
    for t in range((pieces * rpp + 15) // 16):
        ps = set(rows.piece_of[t * 16:(t + 1) * 16].tolist())
        tile_ok[t] = not ps & {1, 3}
    for v in range(pieces * rpp):
        row = rows.c_rows[v].item()
        if tile_ok[v // 16]:
            assert _close(out[row], ref[row], dtype), v
        else:
            assert torch.isnan(out[row]).all(), v
    n_tiles_n = (n + 15) // 16
    touching = lambda p: sum(p in set(rows.piece_of[t * 16:(t + 1) * 16].tolist()) for t in tile_ok)
    assert errors.tolist() == [0, touching(1) * n_tiles_n, 0, touching(3) * n_tiles_n]
    # all flags at the epoch (wrapped around int32: the order is (flag - epoch) >= 0 in int32)
    for ep in (epoch, 2 ** 31 - 1):
        flags.fill_(ep)
        nxt = ep + 1 if ep < 2 ** 31 - 1 else -2 ** 31  # the epoch after ep, wrapped
        errors.zero_()
        out.fill_(float("nan"))
        persistent_gemm(a, w, out=out, rows=rows, wait=Wait(flags, ep, spin_limit=3, errors=errors))
        assert _close(out, ref, dtype) and errors.sum() == 0
        # the next epoch is not reached by the old value: nothing but tiles of piece 0 alone is stored
        errors.zero_()
        persistent_gemm(a, w, out=out.fill_(float("nan")), rows=rows,
                        wait=Wait(flags, nxt, spin_limit=2, errors=errors))
        assert errors[1:].gt(0).all() and errors[0] == 0
        assert _close(out[rows.c_rows[:16].long()], ref[rows.c_rows[:16].long()], dtype)  # tile 0: piece 0 only
        assert torch.isnan(out[rows.c_rows[16:].long()]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_signal_flags_every_chunk_once(dtype):
    chunk_rows = [5, 17, 1, 30]
    m, n, k = sum(chunk_rows), 35, 9
    g = torch.Generator().manual_seed(2)
    a = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    perm = torch.randperm(m, generator=g)
    piece_of = torch.repeat_interleave(torch.arange(4), torch.tensor(chunk_rows)).int()
    rows = RowMap(perm.int(), torch.arange(m).int(), piece_of, 4)
    flags, counters = torch.zeros(4, dtype=torch.int32), torch.zeros(4, dtype=torch.int32)
    for epoch in (1, 2):
        sig = Signal(flags, counters, epoch)
        out = persistent_gemm(a, w, b, out=torch.empty(m, n, dtype=dtype), rows=rows, signal=sig)
        assert _close(out, a.double()[perm] @ w.double().t() + b.double(), dtype)
        assert flags.tolist() == [epoch] * 4 and counters.tolist() == [0] * 4
        # expected tiles per chunk: row tiles touching it (16 rows) times 3 column tiles
        assert sig.expected.tolist() == [1 * 3, 2 * 3, 1 * 3, 3 * 3]  # rows 0-4 | 5-21 | 22 | 23-52


def test_config_table_and_gate_cases():
    for (arch, dt), cfgs in TABLE.items():
        for c in cfgs:
            assert c.num_warps in (4, 8) and c.block_k >= 16
        big = pick(arch, dt, 8192, 8192, 8192)
        assert big == cfgs[0] and pick(arch, dt, 64, 64, 64) == cfgs[1]
        assert pick(arch, dt, 8192, 8192, 8192, "n_major") == TABLE_N_MAJOR[(arch, dt)][0]
    assert pick(0, "fp16", 10 ** 6, 10 ** 6, 10) == INTERPRETER
    cases = gate_cases()
    labels = {c.label + str(c.archs) + str(c.tags) for c in cases}
    assert len(labels) == len(cases)
    per = {(c.archs, c.dtype) for c in cases}
    assert per == {((a,), d) for a in (90, 80) for d in ("bf16", "fp16", "fp32")}
    assert {c.tags["mode"] for c in cases} == set(MODES)
    # every (layout, arch, dtype) config the dispatch can pick is a gate case, in every mode, with and without bias
    got = {(c.tags["w"], c.archs[0], c.dtype, c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], c.constexprs["BLOCK_K"],
            c.tags["mode"], c.tags["bias"]) for c in cases}
    for layout, table in (("k_major", TABLE), ("n_major", TABLE_N_MAJOR)):
        for (arch, dt), cfgs in table.items():
            for c in cfgs:
                for mode in MODES:
                    for bias in (False, True):
                        assert (layout, arch, dt, c.block_m, c.block_n, c.block_k, mode, bias) in got
