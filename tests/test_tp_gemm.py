"""AllGather-GEMM and GEMM-ReduceScatter: values and gradients of x, weight and bias against a
float64 single-device reference, overlapped and plain, leading dims, other sequence dims, exact
ledger volumes, bad inputs on every rank; world sizes 1-4."""
import itertools

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.ops.tp_gemm import all_gather_matmul, matmul_reduce_scatter, tp_gemm_comm_bytes
from tests.distributed import run_world

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 4e-2}
WORLD_SIZES = [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)]


def _rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _shard(t, dim, n, r):
    return t.chunk(n, dim=dim)[r]


def _check(seed):
    info = comm.group_info()
    n, r = info.size, info.rank
    g = torch.Generator().manual_seed(seed)
    errs = {}
    cases = itertools.product(((2, 3), (5,), ()), (True, False), (True, False), (torch.float32, torch.float64,
                                                                                  torch.bfloat16), ("seq1", "seq0"))
    for lead, bias, overlap, dtype, where in cases:
        s_local, d_in, d_out = 3, 12, 5 * n
        shape = lead + (s_local * n, d_in)
        dim = len(lead) if where == "seq1" else 0
        if where == "seq0":
            shape = (s_local * n,) + lead + (d_in,)
        x = _rand(g, *shape)
        w = _rand(g, d_out, d_in)
        b = _rand(g, d_out) if bias else None
        dy = _rand(g, *shape[:-1], d_out)
        # AG-GEMM: column shard of w, sequence shard of x
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        br = b.clone().requires_grad_(True) if bias else None
        y = xr @ wr.t() + (br if bias else 0)
        w_loc, b_loc = _shard(w, 0, n, r), (_shard(b, 0, n, r) if bias else None)
        (y * dy).sum().backward()
        xl = _shard(x, dim, n, r).to(dtype).requires_grad_(True)
        wl = w_loc.to(dtype).requires_grad_(True)
        bl = b_loc.to(dtype).requires_grad_(True) if bias else None
        with ok.comm_ledger() as led:
            out = all_gather_matmul(xl, wl, bl, gather_dim=dim, overlap=overlap)
        dyl = _shard(dy, -1, n, r).to(dtype)
        (out.double() * dyl.double()).sum().backward()
        pairs = [(out, _shard(y.detach(), -1, n, r)), (xl.grad, _shard(xr.grad, dim, n, r)),
                 (wl.grad, _shard(wr.grad, 0, n, r))] + ([(bl.grad, _shard(br.grad, 0, n, r))] if bias else [])
        err = max(((a.double() - e).abs().max() / e.abs().max()).item() for a, e in pairs)
        errs[f"ag-{lead}-{bias}-{overlap}-{dtype}-{where}"] = err / TOL[dtype]
        rows = x.numel() // d_in // n
        kind = "p2p" if overlap and n > 1 else "all_gather"
        assert led.received(kind) == tp_gemm_comm_bytes(n, rows, d_in, d_out, xl.element_size())["all_gather_matmul"]
        # GEMM-RS: row shard of w (input features), full sequence of x with local features
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = xr @ wr.t()
        ys = y + (b if bias else 0)
        (ys * dy).sum().backward()
        xl = _shard(x, -1, n, r).to(dtype).requires_grad_(True)
        wl = _shard(w, 1, n, r).to(dtype).requires_grad_(True)
        bl = b.to(dtype).requires_grad_(True) if bias else None
        with ok.comm_ledger() as led:
            out = matmul_reduce_scatter(xl, wl, bl, scatter_dim=dim, overlap=overlap)
        dyl = _shard(dy, dim, n, r).to(dtype)
        (out.double() * dyl.double()).sum().backward()
        db = comm.all_reduce(bl.grad.double().clone()) if bias else None  # replicated bias: sum of shares
        pairs = [(out, _shard(ys.detach(), dim, n, r)), (xl.grad, _shard(xr.grad, -1, n, r)),
                 (wl.grad, _shard(wr.grad, 1, n, r))] + ([(db, dy.reshape(-1, d_out).sum(0))] if bias else [])
        err = max(((a.double() - e).abs().max() / e.abs().max()).item() for a, e in pairs)
        errs[f"rs-{lead}-{bias}-{overlap}-{dtype}-{where}"] = err / TOL[dtype]
        kind = "p2p" if overlap and n > 1 else "reduce_scatter"
        assert led.received(kind) == tp_gemm_comm_bytes(n, rows, d_in, d_out, xl.element_size())[
            "matmul_reduce_scatter"]
    return errs


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_values_gradients_and_ledger(n):
    per_rank = run_world(_check, n, 100 + n, timeout=600)
    bad = {k: v for res in per_rank for k, v in res.items() if not v <= 1.0}
    assert per_rank[0] and not bad, bad
    assert any(k.startswith("rs-") for k in per_rank[0])  # d_in = 12 divides by every n: both ops ran


def _check_bad():
    info = comm.group_info()
    n, r = info.size, info.rank
    out = {}

    def attempt(key, fn, *a, **kw):
        try:
            fn(*a, **kw)
        except (ValueError, TypeError) as e:
            out[key] = str(e)

    x = torch.randn(2, 4 * n + 1, 8)
    attempt("seq", matmul_reduce_scatter, x, torch.randn(5, 8))
    attempt("wshape", all_gather_matmul, torch.randn(2, 4, 8), torch.randn(5, 7))
    attempt("ranks", all_gather_matmul, torch.randn(2, 4 + (r == n - 1), 8), torch.randn(5, 8))
    attempt("dtype", all_gather_matmul, torch.randn(2, 4, 8), torch.randn(5, 8, dtype=torch.float64))
    return out


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_bad_inputs_raise_on_every_rank(n):
    for e in run_world(_check_bad, n, timeout=60):
        if n > 1:
            assert f"sequence length {4 * n + 1} (dim 1) is not divisible by the group size {n}" in e["seq"]
            assert "must be the same on every rank" in e["ranks"]
        assert "weight must be [d_out, 8] (nn.Linear layout)" in e["wshape"]
        assert e["dtype"].startswith("all_gather_matmul: x, weight and bias must share a dtype")
