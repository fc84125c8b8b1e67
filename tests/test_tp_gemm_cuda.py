"""The fused TP GEMM path on one GPU (``cuda``-marked; skipped without one).

A producer stream plays the communication stream: it delivers the pieces of the gathered input late
(``torch.cuda._sleep`` before each copy) and out of order, writing each piece's flag after its copy,
while the persistent GEMM (grid capped below the SM count) runs on the compute stream. Checked:
exact results (against float64), no deadlock (a bounded host wait on the GEMM's completion event),
and that the check would catch a tile that reads before its flag (pre-set flags over NaN-filled
pieces must produce NaNs). The GEMM-RS side: the flags the GEMM writes gate a consumer stream
(``stream_wait_value32``) that copies each finished chunk out while the GEMM runs. The ops at world
size 1 with ``impl="fused"``: outputs and gradients vs float64."""
import random

import pytest
import torch

from odysseus_kernels._extension_loader import extension_has_cuda
from odysseus_kernels.kernels.gemm import RowMap, Signal, Wait, persistent_gemm
from odysseus_kernels.ops.tp_gemm import all_gather_linear, linear_reduce_scatter
from odysseus_kernels.ops.tp_gemm.fused import SM_MARGIN, _signal, flags_for
from tests.cuda_wait import wait_done
from tests.test_tp_gemm import _err, check_linear_against_float64

pytestmark = pytest.mark.cuda
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 2e-5}
SLEEP_CYCLES = 20_000_000  # ~10 ms at ~2 GHz: far longer than the GEMM itself


def _identity_pieces(pieces, rows_per_piece, device):
    v = torch.arange(pieces * rows_per_piece, device=device)
    return RowMap(v.int(), v.int(), (v // rows_per_piece).int(), pieces)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("gemm_first", [False, True])
def test_late_out_of_order_pieces_exact_no_deadlock(dtype, gemm_first):
    dev = torch.device("cuda")
    pieces, rpp, n, k = 6, 1000, 1536, 1024  # 1000 rows per piece: tiles straddle pieces
    g = torch.Generator(device=dev).manual_seed(0)
    src = torch.randn(pieces * rpp, k, device=dev, generator=g).to(dtype)
    w = torch.randn(n, k, device=dev, generator=g).to(dtype)
    b = torch.randn(n, device=dev, generator=g).to(dtype)
    gathered = torch.full_like(src, float("nan"))
    gathered[:rpp].copy_(src[:rpp])  # piece 0: the local shard, never waited on
    rows = _identity_pieces(pieces, rpp, dev)
    st = flags_for(dev)
    e = st.next_epoch(pieces)
    out = torch.empty(pieces * rpp, n, device=dev, dtype=dtype)
    producer = torch.cuda.Stream(dev)
    producer.wait_stream(torch.cuda.current_stream(dev))
    order = list(range(1, pieces))
    random.Random(1).shuffle(order)

    def produce():
        with torch.cuda.stream(producer):
            for j in order:
                torch.cuda._sleep(SLEEP_CYCLES)
                gathered[j * rpp:(j + 1) * rpp].copy_(src[j * rpp:(j + 1) * rpp])
                _signal(st.ag[j:j + 1], e)

    if gemm_first:
        # The GEMM will spin on flags that only the producer's later work sets: launch that work's kernels
        # once beforehand (on scratch tensors), since a first launch may load its module lazily, which can
        # wait for the spinning GEMM (see odysseus_kernels.kernels.extension_ops.wait).
        with torch.cuda.stream(producer):
            torch.cuda._sleep(1)
            torch.empty_like(src[:rpp]).copy_(src[:rpp])
            _signal(torch.zeros(1, dtype=torch.int32, device=dev), e)
        producer.synchronize()
    else:
        produce()
    persistent_gemm(gathered, w, b, out=out, rows=rows, wait=Wait(st.ag, e), margin=SM_MARGIN)
    done = torch.cuda.Event()
    done.record()
    if gemm_first:
        produce()
    wait_done(done, what="the fused GEMM")
    torch.cuda.current_stream(dev).wait_stream(producer)
    ref = src.double() @ w.double().t() + b.double()
    assert not torch.isnan(out).any()
    assert _err(out, ref) <= TOL[dtype]


def test_reading_before_the_flag_is_detected():
    """The control: flags already at the epoch while the pieces arrive late -> NaNs in the output. So
    the test above, whose flags come after the copies, fails if a tile reads before its flag."""
    dev = torch.device("cuda")
    pieces, rpp, n, k = 4, 512, 512, 512
    src = torch.randn(pieces * rpp, k, device=dev, dtype=torch.float16)
    w = torch.randn(n, k, device=dev, dtype=torch.float16)
    gathered = torch.full_like(src, float("nan"))
    gathered[:rpp].copy_(src[:rpp])
    st = flags_for(dev)
    e = st.next_epoch(pieces)
    st.ag[:pieces].fill_(e)  # wrongly ready before the data
    producer = torch.cuda.Stream(dev)
    producer.wait_stream(torch.cuda.current_stream(dev))
    out = torch.empty(pieces * rpp, n, device=dev, dtype=torch.float16)
    rows = _identity_pieces(pieces, rpp, dev)
    # The same GEMM once, on complete data, so that the timed call below is compiled already: a first
    # call JIT-compiles for a second or more, long after the late copy would have landed.
    persistent_gemm(src, w, out=torch.empty_like(out), rows=rows, wait=Wait(st.ag, e), margin=SM_MARGIN)
    torch.cuda.synchronize()
    with torch.cuda.stream(producer):
        torch.cuda._sleep(SLEEP_CYCLES * 5)
        gathered[rpp:].copy_(src[rpp:])
    persistent_gemm(gathered, w, out=out, rows=rows, wait=Wait(st.ag, e), margin=SM_MARGIN)
    torch.cuda.synchronize()
    assert torch.isnan(out[rpp:]).any()
    assert not torch.isnan(out[:rpp]).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rs_flags_gate_a_consumer_stream(dtype):
    if not extension_has_cuda():
        pytest.skip("needs the compiled extension with CUDA kernels (stream_wait_value32)")
    dev = torch.device("cuda")
    chunks, m, n, k = 5, 4999, 2048, 1536
    a = torch.randn(m, k, device=dev).to(dtype)
    w = torch.randn(n, k, device=dev).to(dtype)
    piece = (torch.arange(m, device=dev) * chunks // m).int()
    v = torch.arange(m, device=dev).int()
    rows = RowMap(v, v, piece, chunks)
    st = flags_for(dev)
    e = st.next_epoch(chunks)
    part = torch.full((m, n), float("nan"), device=dev, dtype=dtype)
    copy = torch.full_like(part, float("nan"))
    bounds = [(int((piece == c).nonzero().min()), int((piece == c).nonzero().max()) + 1) for c in range(chunks)]
    consumer = torch.cuda.Stream(dev)
    consumer.wait_stream(torch.cuda.current_stream(dev))  # the buffers exist; nothing waits on the GEMM
    persistent_gemm(a, w, out=part, rows=rows, signal=Signal(st.rs, st.counters, e), margin=SM_MARGIN)
    with torch.cuda.stream(consumer):
        for c in reversed(range(chunks)):  # out of order on purpose
            torch.ops.odysseus_kernels.stream_wait_value32(st.rs[c:c + 1], e, False)
            copy[bounds[c][0]:bounds[c][1]].copy_(part[bounds[c][0]:bounds[c][1]])
    done = torch.cuda.Event()
    done.record(consumer)
    wait_done(done, what="the consumer stream's flag-gated copies")
    torch.cuda.synchronize()
    assert torch.equal(copy, part) and _err(part, a.double() @ w.double().t()) <= TOL[dtype]
    assert st.rs[:chunks].tolist() == [e] * chunks and st.counters[:chunks].tolist() == [0] * chunks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fused_ops_world_of_one(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 63, 3, 64, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.randn(48, 64, device="cuda", generator=g).to(dtype).requires_grad_()
    b = torch.randn(48, device="cuda", generator=g).to(dtype).requires_grad_()
    check_linear_against_float64(x, w, b, TOL[dtype], (
        lambda: all_gather_linear(x, w, b, impl="fused"), lambda: linear_reduce_scatter(x, w, b, impl="fused"),
        lambda: all_gather_linear(x, w, b)))  # auto: fused on CUDA


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(8192, 8192, 8192), (4097, 1000, 1032), (1, 4096, 4096)])
def test_persistent_gemm_matches_cublas(dtype, shape):
    m, n, k = shape
    a = torch.randn(m, k, device="cuda").to(dtype)
    w = torch.randn(n, k, device="cuda").to(dtype)
    ref = (a.float() @ w.float().t())
    got = persistent_gemm(a, w)
    assert _err(got, ref.double()) <= TOL[dtype]
    got_t = persistent_gemm(a, w.t().contiguous().t())  # an N-major weight view
    assert _err(got_t, ref.double()) <= TOL[dtype]
