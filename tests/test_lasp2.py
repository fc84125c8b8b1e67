"""LASP-2 linear attention on world sizes 1-4, one run_world call per world size: output and q, k, v
gradients against the float64 O(L^2) formula (causal, decay, non-causal; odd head dims; fp64 and
fp32; torch and Triton backends), exactly one AllGather per pass whose ledger volume is
(N-1) B H Dk Dv 4 at two sequence lengths, and bad inputs raising the same clear error on every rank."""
import itertools

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.kernels.linear_attention import linear_attention_ref
from odysseus_kernels.ops.lasp2 import lasp2_comm_bytes, lasp2_linear_attention
from tests.distributed import run_world

# max |got - ref| / max |ref|
TOL = {torch.float64: 1e-11, torch.float32: 2e-5}
B, H = 2, 3


def _one(n, dk, dv, mode, dtype, c, block, backend, seed):
    """Compare one configuration with the float64 formula; return (relative error / tolerance, ledgers)."""
    g = torch.Generator().manual_seed(seed)
    causal, dec = mode != "full", mode == "decay"
    q, k, v = (torch.randn(B, c * n, H, d, generator=g, dtype=torch.float64, requires_grad=True) for d in (dk, dk, dv))
    decay = -torch.rand(H, generator=g, dtype=torch.float64) * 0.5 if dec else None
    ref = linear_attention_ref(q, k, v, log_decay=decay, causal=causal, scale=0.7)
    do = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref.backward(do)
    ql, kl, vl = (ok.shard_sequence(t.detach()).to(dtype).requires_grad_(True) for t in (q, k, v))
    with ok.comm_ledger() as fwd:
        out = lasp2_linear_attention(ql, kl, vl, decay=decay, causal=causal, scale=0.7, block=block, backend=backend)
    with ok.comm_ledger() as bwd:
        out.backward(ok.shard_sequence(do).to(dtype))
    worst = max(((got.double() - ok.shard_sequence(want)).abs().max() / want.abs().max()).item()
                for got, want in ((out, ref.detach()), (ql.grad, q.grad), (kl.grad, k.grad), (vl.grad, v.grad)))
    assert out.dtype == ql.grad.dtype == dtype
    return worst / TOL[dtype], fwd, bwd


def _check_bad(n, r):
    out = {}

    def attempt(key, *a, **kw):
        try:
            lasp2_linear_attention(*a, **kw)
        except (ValueError, TypeError) as e:
            out[key] = f"{type(e).__name__}: {e}"

    q = torch.randn(1, 4, 2, 8)
    attempt("dims", q, torch.randn(1, 4, 2, 6), torch.randn(1, 4, 2, 8))
    attempt("decay_shape", q, q, q, decay=torch.zeros(3))
    attempt("decay_positive", q, q, q, decay=torch.tensor([-0.1, 0.2]))
    attempt("decay_nan", q, q, q, decay=torch.tensor([-0.1, float("nan")]))
    attempt("decay_noncausal", q, q, q, decay=torch.tensor([-0.1, -0.2]), causal=False)
    attempt("triton_fp64", q.double(), q.double(), q.double(), backend="triton")
    qr = torch.randn(1, 4 + (r == n - 1), 2, 8)  # the last rank holds one token more
    attempt("seq", qr, qr, qr)
    attempt("decay_ranks", q, q, q, decay=torch.tensor([-0.1, -0.2 - 0.1 * (r == 0)]))
    return out


def _world(seed):
    info = comm.group_info()
    n = info.size
    errs, volumes = {}, set()
    grid = itertools.product([(5, 7), (8, 8), (16, 12)], ["causal", "decay", "full"], (torch.float64, torch.float32),
                             (9, 4), (4, 64))
    for i, ((dk, dv), mode, dtype, c, block) in enumerate(grid):
        err, fwd, bwd = _one(n, dk, dv, mode, dtype, c, block, "torch", seed + i)
        errs[f"torch-dk{dk}-dv{dv}-{mode}-{dtype}-C{c}-b{block}"] = err
        want = lasp2_comm_bytes(n, B, H, dk, dv, torch.empty((), dtype=dtype).element_size())
        # exactly one AllGather per pass, of the predicted size, and nothing else moved
        assert (fwd.received("all_gather"), bwd.received("all_gather")) == (want["forward"], want["backward"])
        assert fwd.payload_received() == fwd.received("all_gather") and bwd.payload_received() == bwd.received(
            "all_gather")
        if dtype == torch.float32:
            volumes.add((dk, dv, fwd.received("all_gather")))
    # the Triton kernels (interpreter on CPU): decay, odd dims, a ragged last chunk
    for mode, c in (("decay", 20), ("causal", 13)):
        err, fwd, _ = _one(n, 8, 12, mode, torch.float32, c, 16, "triton", seed + 1000)
        errs[f"triton-{mode}-C{c}"] = err
        assert fwd.received("all_gather") == lasp2_comm_bytes(n, B, H, 8, 12)["forward"]
    return errs, sorted(volumes), _check_bad(n, info.rank)


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)])
def test_lasp2_matches_float64_formula_one_gather_per_pass_and_rejects_bad_input(n):
    results = run_world(_world, n, 40 + n, timeout=600)
    for errs, volumes, bad in results:
        worse = {k: v for k, v in errs.items() if not v <= 1.0}
        assert errs and not worse, worse
        # the volume depends on the head dims only: one entry per (dk, dv) across both lengths
        assert volumes == sorted((dk, dv, (n - 1) * B * H * dk * dv * 4) for dk, dv in [(5, 7), (8, 8), (16, 12)])
        assert "q and k must have the same shape" in bad["dims"] and "(1, 4, 2, 6)" in bad["dims"]
        assert "decay must be a [heads] = [2] floating tensor of log-decays, got (3,)" in bad["decay_shape"]
        assert "must be finite and <= 0, got 0.2" in bad["decay_positive"]
        assert "must be finite and <= 0, got nan" in bad["decay_nan"]
        assert "decay needs causal=True" in bad["decay_noncausal"]
        assert bad["triton_fp64"].startswith("TypeError") and "torch.float64" in bad["triton_fp64"]
        if n > 1:
            assert "q must be the same on every rank" in bad["seq"], bad["seq"]
            assert "decay must be the same on every rank" in bad["decay_ranks"], bad["decay_ranks"]
        else:
            assert "seq" not in bad and "decay_ranks" not in bad
    assert all(r[2] == results[0][2] for r in results)  # the same errors on every rank
