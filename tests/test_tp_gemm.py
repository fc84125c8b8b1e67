"""AllGather-GEMM and GEMM-ReduceScatter: outputs and gradients of x, weight and bias against a float64
single-device reference, on world sizes 1-4, for every mode (plain, ring, chunked collectives),
layouts with leading and middle dims and sequence dims other than 1, fp32 and bf16, with and
without bias, saved or re-gathered input; exact ledger volumes forward and backward; bad inputs
raising the same error on every rank; the GEMM helper's in-place paths."""
import itertools

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.ops.tp_gemm import (
    all_gather_linear,
    linear_reduce_scatter,
    tp_gemm_comm_bytes,
)
from odysseus_kernels.ops.tp_gemm.pipeline import (
    MIN_OVERLAP_FLOPS,
    WeightGrad,
    gemm,
    make_plan,
    row_slices,
)
from tests.distributed import run_world
from tests.triton_device import INTERPRETING, needs_interpreter

# max |err| / max |ref| against float64 on the same (rounded) inputs
TOL = {torch.float32: 5e-6, torch.bfloat16: 2e-2, torch.float16: 4e-3}
# name: (dims before the sequence dim, dims between it and the features, the dim argument)
LAYOUTS = {"B2-S-D": ((2,), (), 1), "S-B3-D": ((), (3,), 0), "B2-S-H3-D": ((2,), (3,), -3), "S-D": ((), (), 0)}
MODES = {"plain": {"impl": "plain"}, "ring": {"impl": "ring"}, "chunks2": {"impl": "chunked", "chunks": 2},
         "chunks5": {"impl": "chunked", "chunks": 5}, "fused": {"impl": "fused"}, "fused3": {"impl": "fused", "chunks": 3}}
UNFUSED = ("plain", "ring", "chunks2", "chunks5")
S_LOCAL, D_IN, D_OUT_AG, D_OUT_RS = 3, 24, 5, 7  # D_IN divisible by 1..4 (GEMM-RS shards it)


def _cases():
    cases = []
    for (lname, mode, dtype, bias) in itertools.product(LAYOUTS, UNFUSED, (torch.float32, torch.bfloat16),
                                                        (True, False)):
        # save_gathered alternates so every mode meets both values, in both dtypes
        cases.append((lname, mode, dtype, bias, bias != (dtype == torch.float32), "all"))
    for mode, grads in itertools.product(("plain", "ring", "chunks2"), ("x", "w")):
        cases.append(("B2-S-D", mode, torch.float32, True, False, grads))
    return cases


def _kinds(mode, n):
    if n == 1:
        return set()
    if mode.startswith("fused"):  # AG side on the ring, RS side in chunked reduce-scatters (+ re-gather)
        return {"p2p", "reduce_scatter", "all_gather"}
    return {"p2p"} if mode == "ring" else {"all_gather", "reduce_scatter"}


def _err(a, e):
    return ((a.double() - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def check_linear_against_float64(x, w, b, tol, fns):
    """On a world of one each ``fn()`` is ``x @ w.T + b``: its output and the gradients of ``x``, ``w``,
    ``b`` for a random ``dy`` against float64 autograd, each within ``tol`` (relative to the max)."""
    for fn in fns:
        x.grad = w.grad = b.grad = None
        y = fn()
        dy = torch.randn_like(y)
        y.backward(dy)
        xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
        yr = xr @ wr.t() + br
        yr.backward(dy.double())
        for a, e in ((y, yr), (x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
            assert _err(a, e) <= tol


def _leaf(t, dtype, grad):
    return t.to(dtype).requires_grad_(grad)


def _one_case(g, n, r, lname, mode, dtype, bias, save, grads):
    lead, mid, dim = LAYOUTS[lname]
    sdim = len(lead)
    gx, gw = grads in ("all", "x"), grads in ("all", "w")
    q = lambda t: t.to(dtype).double()
    errs, ledger_bad = {}, []
    # ---- AG-GEMM: x sequence-sharded, weight column-sharded
    x = q(torch.randn(*lead, S_LOCAL * n, *mid, D_IN, generator=g, dtype=torch.float64))
    w = q(torch.randn(D_OUT_AG * n, D_IN, generator=g, dtype=torch.float64))
    b = q(torch.randn(D_OUT_AG * n, generator=g, dtype=torch.float64)) if bias else None
    dy = q(torch.randn(*x.shape[:-1], D_OUT_AG * n, generator=g, dtype=torch.float64))
    ref = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    y = ref[0] @ ref[1].t() + (ref[2] if bias else 0)
    (y * dy).sum().backward()
    xl = _leaf(x.chunk(n, sdim)[r], dtype, gx)
    wl = _leaf(w.chunk(n, 0)[r], dtype, gw)
    bl = _leaf(b.chunk(n, 0)[r], dtype, gw) if bias else None
    with ok.comm_ledger() as fwd:
        out = all_gather_linear(xl, wl, bl, gather_dim=dim, save_gathered=save, **MODES[mode])
    with ok.comm_ledger() as bwd:
        out.backward(dy.chunk(n, -1)[r].to(dtype))
    got = [(out, y.detach().chunk(n, -1)[r])]
    got += [(xl.grad, ref[0].grad.chunk(n, sdim)[r])] if gx else []
    got += [(wl.grad, ref[1].grad.chunk(n, 0)[r])] + ([(bl.grad, ref[2].grad.chunk(n, 0)[r])] if bias else []) \
        if gw else []
    errs["ag"] = max(_err(a, e) for a, e in got)
    vol = tp_gemm_comm_bytes(n, xl.numel() // D_IN, D_IN, D_OUT_AG, xl.element_size(), save_gathered=save)
    bwd_expected = {"all": vol["all_gather_linear_backward"], "x": vol["all_gather_linear"],
                    "w": 0 if save else vol["all_gather_linear"]}[grads]
    for name, led, expected in (("ag-fwd", fwd, vol["all_gather_linear"]), ("ag-bwd", bwd, bwd_expected)):
        kinds = {k for k, v in led.by_kind.items() if k != "metadata" and v.received}
        if led.payload_received() != expected or not kinds <= _kinds(mode, n):
            ledger_bad.append((name, led.as_dict(), expected))
    # ---- GEMM-RS: x full sequence with its input-feature shard, weight row-sharded, bias replicated
    x = q(torch.randn(*lead, S_LOCAL * n, *mid, D_IN, generator=g, dtype=torch.float64))
    w = q(torch.randn(D_OUT_RS, D_IN, generator=g, dtype=torch.float64))
    b = q(torch.randn(D_OUT_RS, generator=g, dtype=torch.float64)) if bias else None
    dy = q(torch.randn(*x.shape[:-1], D_OUT_RS, generator=g, dtype=torch.float64))
    ref = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    y = ref[0] @ ref[1].t() + (ref[2] if bias else 0)
    (y * dy).sum().backward()
    xl = _leaf(x.chunk(n, -1)[r], dtype, gx)
    wl = _leaf(w.chunk(n, 1)[r], dtype, gw)
    bl = _leaf(b, dtype, gw) if bias else None
    with ok.comm_ledger() as fwd:
        out = linear_reduce_scatter(xl, wl, bl, scatter_dim=dim, **MODES[mode])
    with ok.comm_ledger() as bwd:
        out.backward(dy.chunk(n, sdim)[r].to(dtype))
    got = [(out, y.detach().chunk(n, sdim)[r])]
    got += [(xl.grad, ref[0].grad.chunk(n, -1)[r])] if gx else []
    if gw:
        got += [(wl.grad, ref[1].grad.chunk(n, 1)[r])]
        if bias:  # replicated bias: each rank holds its rows' share; their sum is the gradient
            got += [(comm.all_reduce(bl.grad.double()), ref[2].grad)]
    errs["rs"] = max(_err(a, e) for a, e in got)
    vol = tp_gemm_comm_bytes(n, out.numel() // D_OUT_RS, D_IN // n, D_OUT_RS, xl.element_size())
    for name, led, expected in (("rs-fwd", fwd, vol["linear_reduce_scatter"]),
                                ("rs-bwd", bwd, vol["linear_reduce_scatter_backward"])):
        kinds = {k for k, v in led.by_kind.items() if k != "metadata" and v.received}
        if led.payload_received() != expected or not kinds <= _kinds(mode, n):
            ledger_bad.append((name, led.as_dict(), expected))
    return errs, ledger_bad


def _fused_cases():
    """The fused impl (the persistent Triton GEMM in the interpreter: fp32 and fp16, whose dot the
    interpreter computes right; bf16's it does not)."""
    cases = []
    for i, (lname, bias) in enumerate(itertools.product(LAYOUTS, (True, False))):
        cases.append((lname, "fused" if i % 2 else "fused3", torch.float32, bias, i % 3 != 0, "all"))
    cases += [("B2-S-H3-D", "fused", torch.float16, True, True, "all"), ("S-D", "fused3", torch.float16, False, False, "all")]
    cases += [("B2-S-D", "fused", torch.float32, True, False, "x"), ("B2-S-D", "fused", torch.float32, True, False, "w")]
    return cases


def _check_all(seed, fused_only=False):
    info = comm.group_info()
    g = torch.Generator().manual_seed(seed)  # same stream on every rank: the same full tensors
    results = {}
    for case in (_fused_cases() if fused_only else _cases()):
        errs, ledger_bad = _one_case(g, info.size, info.rank, *case)
        results["-".join(map(str, case))] = (errs, ledger_bad, case[2])
    return results


def _assert_all_within_tolerance(per_rank):
    """Every rank's errors (vs float64) within the dtype's tolerance and every ledger equal to its closed form."""
    bad = {}
    for rank, res in enumerate(per_rank):
        for key, (errs, ledger_bad, dtype) in res.items():
            for op, e in errs.items():
                if not e <= TOL[dtype]:
                    bad[(rank, key, op)] = e
            if ledger_bad:
                bad[(rank, key, "ledger")] = ledger_bad
    assert not bad, bad


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)])
def test_values_gradients_and_ledger(n):
    per_rank = run_world(_check_all, n, 1000 + n, timeout=600)
    assert len(per_rank[0]) == len(_cases())
    _assert_all_within_tolerance(per_rank)


@needs_interpreter
@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)])
def test_fused_values_gradients_and_ledger(n):
    per_rank = run_world(_check_all, n, 2000 + n, True, timeout=900)
    assert len(per_rank[0]) == len(_fused_cases())
    _assert_all_within_tolerance(per_rank)


def _check_bad():
    info = comm.group_info()
    n, r = info.size, info.rank
    out = {}

    def attempt(key, fn, *a, **kw):
        try:
            fn(*a, **kw)
            out[key] = None
        except (ValueError, TypeError) as e:
            out[key] = (type(e).__name__, str(e))

    x, w = torch.randn(2, 4, 8), torch.randn(5, 8)
    attempt("seq", linear_reduce_scatter, torch.randn(2, 4 * n + 1, 8), w)
    attempt("wshape", all_gather_linear, x, torch.randn(5, 7))
    attempt("wshape_rs", linear_reduce_scatter, torch.randn(2, 4 * n, 8), torch.randn(5, 9))
    attempt("ranks", all_gather_linear, torch.randn(2, 4 + (r == n - 1), 8), w)
    attempt("dtype", all_gather_linear, x, w.double())
    attempt("dtype_one_rank", linear_reduce_scatter, torch.randn(2, 4 * n, 8), w.double() if r == 0 else w)
    attempt("bias", all_gather_linear, x, w, torch.randn(4))
    attempt("dim", all_gather_linear, x, w, gather_dim=3)
    attempt("feature_dim", linear_reduce_scatter, torch.randn(2, 4 * n, 8), w, scatter_dim=-1)
    attempt("chunks", all_gather_linear, x, w, impl="chunked", chunks=0)
    attempt("chunks_impl", all_gather_linear, x, w, chunks=2)
    attempt("impl", all_gather_linear, x, w, impl="yes")
    attempt("fused_dtype", linear_reduce_scatter, torch.randn(2, 4 * n, 8).double(), w.double(), impl="fused")
    attempt("int", all_gather_linear, x.long(), w.long())
    # the group is still in step after all that
    out["after"] = all_gather_linear(torch.full((1, 2, 8), float(r)), torch.ones(3, 8), impl="ring")[0, :, 0].tolist()
    return out


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)])
def test_bad_inputs_raise_on_every_rank(n):
    res = run_world(_check_bad, n, timeout=120)
    strip = lambda e: e and (e[0], e[1].replace(" (raised on rank 0)", ""))
    for key in res[0]:
        if key != "after":  # the same error on every rank
            assert all(strip(rr[key]) == strip(res[0][key]) for rr in res), (key, [rr[key] for rr in res])
    e = res[0]
    assert e["wshape"] == ("ValueError", ("all_gather_linear: weight must be [d_out, 8] (nn.Linear layout, d_in = "
                                          "x.shape[-1]) for x of shape (2, 4, 8), got (5, 7)"))
    assert "weight must be [d_out, 8]" in e["wshape_rs"][1] and "got (5, 9)" in e["wshape_rs"][1]
    assert e["dtype"][0] == "TypeError" and "weight torch.float64" in e["dtype"][1]
    assert e["bias"][1].endswith("bias must be [5] (weight.shape[0]), got (4,)")
    assert "gather_dim must be in [-3, 1]" in e["dim"][1] and e["dim"][1].endswith("got 3")
    assert "cannot be the feature (last) dim" in e["feature_dim"][1]
    assert e["chunks"] == ("ValueError", "all_gather_linear: chunks must be None or an int >= 1, got 0")
    assert e["chunks_impl"][0] == "ValueError" and "chunks applies to impl='chunked'" in e["chunks_impl"][1]
    assert e["impl"][0] == "ValueError" and "impl must be one of 'auto', 'fused'" in e["impl"][1]
    if INTERPRETING:
        assert e["fused_dtype"][0] == "TypeError" and "impl='fused' supports" in e["fused_dtype"][1]
    else:  # CPU tensors with a GPU at hand (no interpreter): the fused impl is refused first
        assert e["fused_dtype"][0] == "ValueError" and "TRITON_INTERPRET=1" in e["fused_dtype"][1]
    assert e["int"][0] == "TypeError" and "floating-point" in e["int"][1]
    if n > 1:
        assert e["seq"][1] == (f"linear_reduce_scatter: sequence length {4 * n + 1} (x.shape[1]) must be divisible "
                               f"by the group size {n}")
        assert "x must be the same on every rank" in e["ranks"][1] and f"rank {n - 1}: (2, 5, 8)" in e["ranks"][1]
        assert e["dtype_one_rank"][0] == "TypeError" and "(raised on rank 0)" in res[1]["dtype_one_rank"][1]
    else:
        assert e["seq"] is None and e["ranks"] is None and e["dtype_one_rank"][0] == "TypeError"
    assert all(rr["after"] == [8.0 * k for k in range(n) for _ in range(2)] for rr in res)  # sum of 8 features


def test_plan_modes_and_threshold():
    one, two = comm.GroupInfo(None, 0, 1), comm.GroupInfo(None, 0, 2)
    assert make_plan(one, "ring", None, "cuda", 1 << 40).mode == "local"
    assert make_plan(one, "auto", None, "cuda", 1 << 40).mode == "local"
    assert (make_plan(one, "fused", None, "cpu", 0).mode, make_plan(one, "fused", 3, "cpu", 0).chunks) == ("fused", 3)
    assert make_plan(two, "plain", None, "cuda", 1 << 40).mode == "plain"
    assert (make_plan(two, "chunked", 3, "cpu", 0).mode, make_plan(two, "chunked", 3, "cpu", 0).chunks) == ("chunks", 3)
    assert make_plan(two, "chunked", None, "cpu", 0).chunks == 4
    assert make_plan(two, "ring", None, "cpu", 0).mode == "ring"
    assert make_plan(two, "auto", None, "cpu", 1 << 40).mode == "plain"  # CPU: never decomposed unless asked
    assert make_plan(two, "auto", None, "cuda", 0).mode == "fused"  # CUDA: the fused GEMM
    assert make_plan(two, "auto", None, "cuda", MIN_OVERLAP_FLOPS, fused_ok=False).mode == "ring"
    assert make_plan(two, "auto", None, "cuda", MIN_OVERLAP_FLOPS - 1, fused_ok=False).mode == "plain"
    assert row_slices(9, 5) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(8, 9)]
    assert row_slices(3, 5) == [slice(0, 1), slice(1, 2), slice(2, 3)] and row_slices(0, 2) == [slice(0, 0)]


@pytest.mark.parametrize("dtype", [pytest.param(d, id=str(d)[6:]) for d in TOL])
def test_gemm_writes_slices_in_place(dtype):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g).to(dtype)
    bt, bias = rnd(5, 6).t(), rnd(5)  # a transposed view, like weight.t()
    big = torch.full((2, 4, 4, 5), float("nan"), dtype=dtype)
    for a, out in ((rnd(1, 4, 6), big[:1, 0]),              # folds to one 2-D GEMM
                   (rnd(2, 4, 6), big[:, 1]),               # strided batched GEMM, in place
                   (rnd(2, 2, 2, 6), big[:, 2:4, 1:3])):    # does not flatten: through a temporary
        nan_before = int(torch.isnan(big).sum())
        gemm(a, bt, bias=bias, out=out)
        assert _err(out, a.double() @ bt.double() + bias.double()) <= TOL[dtype]
        assert int(torch.isnan(big).sum()) == nan_before - out.numel()  # wrote exactly its slice
    a = rnd(3, 4, 6)[:, 1:]  # non-contiguous 3-D input, fresh output in fp32
    r = gemm(a, bt, out_dtype=torch.float32)
    assert r.dtype == torch.float32 and _err(r, a.double() @ bt.double()) <= TOL[dtype]
    wg = WeightGrad(dtype)
    a1, b1, a2, b2 = rnd(2, 7, 5), rnd(2, 7, 6), rnd(3, 5), rnd(3, 6)
    wg.add(a1, b1)
    wg.add(a2, b2)
    ref = a1.double().reshape(-1, 5).t() @ b1.double().reshape(-1, 6) + a2.double().t() @ b2.double()
    assert wg.acc.dtype == (torch.float32 if dtype != torch.float64 else torch.float64)
    assert wg.result().dtype == dtype and _err(wg.result(), ref) <= TOL[dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_world_of_one_and_fp32_accumulation(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 63, 3, 24, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.randn(40, 24, device="cuda", generator=g).to(dtype).requires_grad_()
    b = torch.randn(40, device="cuda", generator=g).to(dtype).requires_grad_()
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 2e-5}[dtype]
    check_linear_against_float64(x, w, b, tol, (lambda: all_gather_linear(x, w, b, impl="ring"),
                                                lambda: linear_reduce_scatter(x, w, b)))
    a, bt = torch.randn(3, 64, 32, device="cuda").to(dtype)[:, 1:], torch.randn(32, 48, device="cuda").to(dtype)
    r = gemm(a, bt, out_dtype=torch.float32)  # cuBLAS writes the fp32 accumulator
    assert r.dtype == torch.float32 and _err(r, a.double() @ bt.double()) <= tol / 4


def _check_empty():
    """Zero rows, zero input features, zero output features: right (empty or bias) outputs and
    gradients on every rank, every impl, without communicating (the group stays in step)."""
    info = comm.group_info()
    n = info.size
    out = {}
    for impl in ("auto", "plain", "ring", "chunked") + (("fused",) if INTERPRETING else ()):
        for name, (b, s, d_in, d_out) in {"batch0": (0, 2, 8, 5), "seq0": (2, 0, 8, 5), "din0": (2, 2, 0, 5),
                                          "dout0": (2, 2, 8, 0)}.items():
            x = torch.randn(b, s, d_in, requires_grad=True)
            w = torch.randn(d_out, d_in, requires_grad=True)
            bias = torch.randn(d_out, requires_grad=True)
            y = all_gather_linear(x, w, bias, impl=impl)
            dy = torch.randn(y.shape)
            y.backward(dy)
            ok_ag = (y.shape == (b, n * s, d_out) and torch.equal(y, bias.detach().expand(y.shape))
                     and torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(w.grad, torch.zeros_like(w))
                     and torch.allclose(bias.grad, dy.sum((0, 1))))
            xr = torch.randn(b, n * s, d_in, requires_grad=True)
            wr = torch.randn(d_out, d_in, requires_grad=True)
            br = torch.randn(d_out, requires_grad=True)
            z = linear_reduce_scatter(xr, wr, br, impl=impl)
            dz = torch.randn(z.shape)
            z.backward(dz)
            ok_rs = (z.shape == (b, s, d_out) and torch.equal(z, br.detach().expand(z.shape))
                     and torch.equal(xr.grad, torch.zeros_like(xr)) and torch.equal(wr.grad, torch.zeros_like(wr))
                     and torch.allclose(br.grad, dz.sum((0, 1))))
            out[(impl, name)] = (ok_ag, ok_rs)
    out["after"] = all_gather_linear(torch.full((1, 2, 8), float(info.rank)), torch.ones(3, 8), impl="ring")[0, :, 0].tolist()
    return out


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (1, 2, 3)])
def test_empty_tensors(n):
    res = run_world(_check_empty, n, timeout=300)
    for rr in res:
        assert all(v == (True, True) for k, v in rr.items() if k != "after"), rr
        assert rr["after"] == [8.0 * k for k in range(n) for _ in range(2)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_fused_on_cpu_needs_the_interpreter():
    import os
    import subprocess
    import sys

    code = ("import torch, odysseus_kernels as ok\n"
            "try:\n    ok.all_gather_linear(torch.randn(1, 2, 8), torch.randn(3, 8), impl='fused')\n"
            "except ValueError as e:\n    print('ERR', e)\n"
            "print('AUTO', tuple(ok.all_gather_linear(torch.randn(1, 2, 8), torch.randn(3, 8)).shape))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERR all_gather_linear: impl='fused' on CPU runs the Triton kernel in the interpreter" in r.stdout, r
    assert "AUTO (1, 2, 3)" in r.stdout  # auto never needs it on CPU


def test_plan_inside_a_cuda_graph_capture_avoids_the_host_counted_flags(monkeypatch):
    """While a CUDA graph is captured on several ranks, ``auto`` picks the chunked collectives and an
    explicit ``fused`` raises (its flags' epoch is counted on the host: a replay would read stale flags)."""
    from odysseus_kernels.comm import GroupInfo
    from odysseus_kernels.ops.tp_gemm.pipeline import make_plan

    info = GroupInfo(group=None, rank=0, size=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert make_plan(info, "auto", None, "cuda", 1).mode == "fused"
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert make_plan(info, "auto", None, "cuda", 1).mode == "chunks"
    assert make_plan(info, "ring", None, "cuda", 1).mode == "ring"
    with pytest.raises(ValueError, match="cannot be captured in a CUDA graph"):
        make_plan(info, "fused", None, "cuda", 1)
    one = GroupInfo(group=None, rank=0, size=1)
    assert make_plan(one, "fused", None, "cuda", 1).mode == "fused"  # one rank: no remote flags
