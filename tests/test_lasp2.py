"""LASP-2 linear attention on world sizes 1-4, one test item per case: output and q, k, v,
g, g_gamma gradients against the float64 O(L^2) formula (causal without decay, per-head g_gamma,
per-token g, both, non-causal; odd head dims; fp64 and fp32; torch and Triton backends), exactly
one AllGather per pass whose ledger volume is (N-1) B H Dk Dv 4 (plus B H floats in the forward with
a per-token g) at two sequence lengths, empty shards and batch 0, and bad inputs raising the same
clear error on every rank."""
import itertools

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.kernels.linear_attention import linear_attention_ref
from odysseus_kernels.ops.lasp2 import lasp2_comm_bytes, lasp2_linear_attention
from tests.distributed import run_world
from tests.triton_device import needs_interpreter

# max |got - ref| / max |ref| (the decay gradients: relative to the scale of their summands)
TOL = {torch.float64: 1e-11, torch.float32: 2e-5}
B, H = 2, 3
MODES = {"causal": (True, False, False), "g_gamma": (True, False, True), "g": (True, True, False),
         "both": (True, True, True), "full": (False, False, False)}


def _one(n, dk, dv, mode, dtype, c, block, backend, seed):
    """Compare one configuration with the float64 formula; return (relative error / tolerance,
    ledgers, this rank's g_gamma gradient, the reference's)."""
    gen = torch.Generator().manual_seed(seed)
    causal, use_g, use_gamma = MODES[mode]
    q, k, v = (torch.randn(B, c * n, H, d, generator=gen, dtype=torch.float64, requires_grad=True) for d in (dk, dk, dv))
    g = (-torch.rand(B, c * n, H, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(True) if use_g else None
    gg = (-torch.rand(H, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(True) if use_gamma else None
    ref = linear_attention_ref(q, k, v, g=g, g_gamma=gg, causal=causal, scale=0.7)
    do = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(do)
    ql, kl, vl = (ok.shard_sequence(t.detach()).to(dtype).requires_grad_(True) for t in (q, k, v))
    gl = ok.shard_sequence(g.detach()).requires_grad_(True) if use_g else None
    ggl = gg.detach().clone().requires_grad_(True) if use_gamma else None
    with ok.comm_ledger() as fwd:
        out = lasp2_linear_attention(ql, kl, vl, g=gl, g_gamma=ggl, causal=causal, scale=0.7, block=block,
                                     backend=backend)
    with ok.comm_ledger() as bwd:
        out.backward(ok.shard_sequence(do).to(dtype))
    pairs = [(out, ref.detach()), (ql.grad, q.grad), (kl.grad, k.grad), (vl.grad, v.grad)]
    worst = max(((got.double() - ok.shard_sequence(want)).abs().max() / want.abs().max()).item()
                for got, want in pairs)
    if use_g:  # dg_s = sum_{t>=s} (q.dq - k.dk): relative to the same sum of absolute products
        absum = (q.abs() * q.grad.abs()).sum(-1) + (k.abs() * k.grad.abs()).sum(-1)
        scale_g = absum.flip(1).cumsum(1).flip(1).max()
        worst = max(worst, ((gl.grad - ok.shard_sequence(g.grad)).abs().max() / scale_g).item())
        assert gl.grad.dtype == torch.float64
    assert out.dtype == ql.grad.dtype == dtype
    gamma = None
    if use_gamma:  # this rank's g_gamma gradient, the reference's and the scale of its summands
        absum = (q.abs() * q.grad.abs()).sum(-1) + (k.abs() * k.grad.abs()).sum(-1)
        gamma = (ggl.grad.tolist(), gg.grad.tolist(), absum.flip(1).cumsum(1).flip(1).sum((0, 1)).max().item())
    return worst / TOL[dtype], fwd, bwd, gamma  # (plain Python values: results cross processes)


def _check_bad(n, r):
    out = {}

    def attempt(key, *a, **kw):
        try:
            lasp2_linear_attention(*a, **kw)
        except (ValueError, TypeError) as e:
            out[key] = f"{type(e).__name__}: {e}"

    q = torch.randn(1, 4, 2, 8)
    attempt("dims", q, torch.randn(1, 4, 2, 6), torch.randn(1, 4, 2, 8))
    attempt("g_gamma_shape", q, q, q, g_gamma=torch.zeros(3))
    attempt("g_gamma_positive", q, q, q, g_gamma=torch.tensor([-0.1, 0.2]))
    attempt("g_gamma_nan", q, q, q, g_gamma=torch.tensor([-0.1, float("nan")]))
    attempt("g_shape", q, q, q, g=torch.zeros(1, 4, 3))
    attempt("g_positive", q, q, q, g=torch.full((1, 4, 2), 0.5))
    attempt("g_noncausal", q, q, q, g=torch.zeros(1, 4, 2), causal=False)
    attempt("g_gamma_noncausal", q, q, q, g_gamma=torch.tensor([-0.1, -0.2]), causal=False)
    attempt("triton_fp64", q.double(), q.double(), q.double(), backend="triton")
    qr = torch.randn(1, 4 + (r == n - 1), 2, 8)  # the last rank holds one token more
    attempt("seq", qr, qr, qr)
    attempt("g_gamma_ranks", q, q, q, g_gamma=torch.tensor([-0.1, -0.2 - 0.1 * (r == 0)]))
    attempt("scale_ranks", q, q, q, scale=1.0 + (r == 0))
    return out


def _empty(n):
    """Batch 0 and zero-length shards: empty outputs and gradients, nothing communicated."""
    res = []
    for shape in ((0, 3, 2, 8), (2, 0, 2, 8)):
        for backend in ("torch", "triton"):
            q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
            g = torch.zeros(shape[:3], requires_grad=True)
            gg = torch.full((2,), -0.1, requires_grad=True)
            with ok.comm_ledger() as led:
                o = lasp2_linear_attention(q, k, v, g=g, g_gamma=gg, backend=backend)
                o.sum().backward()
            res.append((tuple(o.shape), tuple(q.grad.shape), tuple(k.grad.shape), tuple(v.grad.shape),
                        tuple(g.grad.shape), tuple(gg.grad.shape), float(gg.grad.abs().sum()),
                        led.received("all_gather")))
    return res


def _cases():
    """(backend, dk, dv, mode, dtype, c, block, seed offset): the torch backend over head dims x modes x
    dtypes, each (dims, dtype) at both lengths; the Triton kernels (interpreter on CPU) with a constant
    and a per-token decay, odd dims and a ragged last chunk."""
    cases = []
    grid = itertools.product([(5, 7), (16, 12)], MODES, ("float64", "float32"))
    for i, ((dk, dv), mode, dtype) in enumerate(grid):
        c, block = ((9, 4), (4, 64))[(i // 2) % 2]  # both lengths for every (dims, dtype)
        cases.append(("torch", dk, dv, mode, dtype, c, block, i))
    cases += [("triton", 8, 12, mode, "float32", c, 16, 1000)
              for mode, c in (("g_gamma", 20), ("g", 13), ("causal", 13))]
    return cases


def _check_case(seed, backend, dk, dv, mode, dtype, c, block, offset):
    """One case of :func:`_cases`: (error / tolerance, this rank's g_gamma gradient, the reference's,
    the scale of its summands); exactly one AllGather per pass, of the predicted size."""
    n = comm.group_info().size
    dtype = getattr(torch, dtype)
    err, fwd, bwd, gamma = _one(n, dk, dv, mode, dtype, c, block, backend, seed + offset)
    want = lasp2_comm_bytes(n, B, H, dk, dv, torch.empty((), dtype=dtype).element_size(),
                            per_token_decay=MODES[mode][1])
    if backend == "torch":
        # exactly one AllGather per pass, of the predicted size, and nothing else moved
        assert (fwd.received("all_gather"), bwd.received("all_gather")) == (want["forward"], want["backward"])
        assert fwd.payload_received() == fwd.received("all_gather")
        assert bwd.payload_received() == bwd.received("all_gather")
        if dtype == torch.float32 and mode in ("causal", "g_gamma", "full"):
            # the volume depends on the head dims only (both lengths)
            assert fwd.received("all_gather") == (n - 1) * B * H * dk * dv * 4
    else:
        assert fwd.received("all_gather") == want["forward"]
    return err, gamma


@pytest.mark.parametrize("n, case", [pytest.param(n, case, id=f"N{n}-{case[0]}-dk{case[1]}-dv{case[2]}-{case[3]}-"
                                                         f"{case[4]}-C{case[5]}-b{case[6]}",
                                                  marks=[needs_interpreter] if case[0] == "triton" else [])
                                     for n in (1, 2, 3, 4) for case in _cases()])
def test_lasp2_matches_float64_formula_with_one_gather_per_pass(n, case):
    results = run_world(_check_case, n, 40 + n, *case, timeout=600)
    assert all(err <= 1.0 for err, _ in results), [err for err, _ in results]
    if results[0][1] is not None:
        # g_gamma is replicated: the sum over ranks of each rank's gradient is the exact gradient
        # (relative to the scale of its summands, as dg)
        _, ref, scale = results[0][1]
        total = sum(torch.tensor(r[1][0], dtype=torch.float64) for r in results)
        err = ((total - torch.tensor(ref, dtype=torch.float64)).abs().max() / scale).item()
        assert err < TOL[getattr(torch, case[4])], err


def _empty_and_bad():
    info = comm.group_info()
    return _empty(info.size), _check_bad(info.size, info.rank)


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)])
def test_lasp2_empty_shards_and_bad_input(n):
    results = run_world(_empty_and_bad, n, timeout=600)
    for empty, bad in results:
        for o, dq, dk, dv, dg, dgg, dgg_sum, moved in empty:
            assert o == dq == dk == dv and dg == o[:3] and dgg == (2,) and dgg_sum == 0.0 and moved == 0
        assert "q and k must have the same shape" in bad["dims"] and "(1, 4, 2, 6)" in bad["dims"]
        assert "g_gamma must be a [heads] = [2] floating tensor of log-decays, got (3,)" in bad["g_gamma_shape"]
        assert "g_gamma holds log-decays, which must be finite and <= 0, got 0.2" in bad["g_gamma_positive"]
        assert "must be finite and <= 0, got nan" in bad["g_gamma_nan"]
        assert "g must be a [batch, seq_local, heads] = [1, 4, 2] floating tensor" in bad["g_shape"]
        assert "g holds log-decays, which must be finite and <= 0, got 0.5" in bad["g_positive"]
        assert "g (a decay) needs causal=True" in bad["g_noncausal"]
        assert "g_gamma (a decay) needs causal=True" in bad["g_gamma_noncausal"]
        assert bad["triton_fp64"].startswith("TypeError") and "torch.float64" in bad["triton_fp64"]
        if n > 1:
            assert "q must be the same on every rank" in bad["seq"], bad["seq"]
            assert "g_gamma must be the same on every rank" in bad["g_gamma_ranks"], bad["g_gamma_ranks"]
            assert "scale must be the same on every rank" in bad["scale_ranks"], bad["scale_ranks"]
        else:
            assert not {"seq", "g_gamma_ranks", "scale_ranks"} & set(bad)
    assert all(r[1] == results[0][1] for r in results)  # the same errors on every rank
