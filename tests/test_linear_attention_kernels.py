"""Shard-local linear-attention kernels: the chunked torch path (float64, exact) and the Triton
kernels (interpreter on CPU: fp32/fp16; bf16/fp32 on a GPU) against the float64 O(L^2) formula,
output and every input's gradient, with and without decay, odd head dims, lengths that are not
multiples of the chunk; each Triton step against its torch twin; the diagonal token by token; the
state scan."""
import pytest
import torch

from odysseus_kernels.kernels.linear_attention import (
    chunk_bwd_dh,
    chunk_fwd_h,
    intra_chunk_bwd,
    intra_chunk_fwd,
    linear_attention_ref,
    state_scan,
)

# max |got - ref| / max |ref|, per dtype (fp32 on a GPU runs its matmuls in TF32)
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 3e-3}
TOL_CUDA = {torch.float32: 5e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _inputs(b, c, h, dk, dv, decay, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(b, c, h, d, generator=g, dtype=torch.float64).to(device) for d in (dk, dk, dv, dv))
    ld = (-torch.rand(h, generator=g, dtype=torch.float64) * 0.3).to(device) if decay else None
    return q, k, v, do, ld


def _reference(q, k, v, do, ld):
    """Output and q, k, v gradients of the float64 O(L^2) formula."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    o = linear_attention_ref(*leaves, log_decay=ld)
    o.backward(do)
    return [o.detach()] + [t.grad for t in leaves]


def _rel(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


TRITON_CASES = [
    pytest.param(37, 8, 12, False, 16, id="C37-dk8-dv12"),
    pytest.param(70, 16, 8, True, 16, id="C70-dk16-dv8-decay"),
    pytest.param(50, 12, 24, True, 64, id="C50-dk12-dv24-decay-bt64"),
    pytest.param(16, 5, 7, False, 16, id="C16-dk5-dv7"),
    pytest.param(45, 24, 20, True, 32, id="C45-dk24-dv20-decay-bt32"),
    pytest.param(64, 64, 64, True, 32, id="C64-d64-decay"),
]


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("c, dk, dv, decay, block", TRITON_CASES)
def test_triton_matches_the_float64_formula(c, dk, dv, decay, block, dtype):
    q, k, v, do, ld = _inputs(2, c, 3, dk, dv, decay, seed=c + dk)
    want = _reference(q, k, v, do, ld)
    low = [t.to(dtype) for t in (q, k, v, do)]
    out = intra_chunk_fwd(*low[:3], log_decay=ld, block=block, backend="triton")
    grads = intra_chunk_bwd(*low, log_decay=ld, block=block, backend="triton")
    for name, got, w in zip(("o", "dq", "dk", "dv"), (out, *grads), want):
        assert got.dtype == torch.float32 and got.shape == w.shape, name
        assert _rel(got, w) < TOL[dtype], (name, _rel(got, w))


@pytest.mark.parametrize("decay", [pytest.param(False, id="nodecay"), pytest.param(True, id="decay")])
@pytest.mark.parametrize("block", [1, 7, 16, 64, 100])
def test_torch_chunked_path_is_exact(block, decay):
    q, k, v, do, ld = _inputs(2, 53, 3, 9, 6, decay, seed=block)
    want = _reference(q, k, v, do, ld)
    got = [intra_chunk_fwd(q, k, v, log_decay=ld, block=block, backend="torch"),
           *intra_chunk_bwd(q, k, v, do, log_decay=ld, block=block, backend="torch")]
    for name, a, w in zip(("o", "dq", "dk", "dv"), got, want):
        assert a.dtype == torch.float64
        assert _rel(a, w) < TOL[torch.float64], (name, _rel(a, w))


def test_triton_steps_match_their_torch_twins():
    """Chunk states, the shard state M, state gradients and G, one by one (ragged last chunk)."""
    q, k, v, do, ld = _inputs(2, 41, 3, 12, 20, True, seed=7)
    qf, kf, vf, dof = (t.float() for t in (q, k, v, do))
    for (h_t, m_t), (h_r, m_r) in [(chunk_fwd_h(kf, vf, log_decay=ld, block=16, backend="triton"),
                                    chunk_fwd_h(k, v, log_decay=ld, block=16, backend="torch")),
                                   (chunk_bwd_dh(qf, dof, log_decay=ld, block=16, backend="triton"),
                                    chunk_bwd_dh(q, do, log_decay=ld, block=16, backend="torch"))]:
        assert h_t.shape == h_r.shape == (2, 3, 3, 12, 20) and m_t.shape == m_r.shape == (2, 3, 12, 20)
        assert _rel(h_t, h_r) < TOL[torch.float32] and _rel(m_t, m_r) < TOL[torch.float32]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_exact_at_every_token_including_the_diagonal(backend):
    # a known public implementation is causal only at chunk granularity and drops the diagonal block
    q, k, v, _, ld = _inputs(1, 40, 2, 8, 8, True, seed=1)
    dt = torch.float64 if backend == "torch" else torch.float32
    o = intra_chunk_fwd(q.to(dt), k.to(dt), v.to(dt), log_decay=ld, block=16, backend=backend)
    lam = torch.exp(ld)
    for t in (0, 15, 16, 37, 39):  # chunk edges and the ragged last chunk
        want = sum(lam.view(-1, 1) ** (t - s) * (q[0, t] * k[0, s]).sum(-1, keepdim=True) * v[0, s]
                   for s in range(t + 1))
        assert _rel(o[0, t], want) < TOL[dt], t


def test_state_scan_is_the_exclusive_decayed_prefix_and_suffix():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 2, 3, 4, 6, generator=g, dtype=torch.float64)
    ld = -torch.rand(3, generator=g, dtype=torch.float64)
    a = torch.exp(ld).view(1, 3, 1, 1)
    pre, suf = state_scan(m, ld, reverse=False), state_scan(m, ld, reverse=True)
    for t in range(5):
        want_pre = sum((a ** (t - 1 - j) * m[j] for j in range(t)), torch.zeros_like(m[0]))
        want_suf = sum((a ** (j - 1 - t) * m[j] for j in range(t + 1, 5)), torch.zeros_like(m[0]))
        torch.testing.assert_close(pre[t], want_pre, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(suf[t], want_suf, rtol=1e-12, atol=1e-12)
    for zero in (None, torch.zeros(3, dtype=torch.float64)):  # no decay: plain exclusive sums
        torch.testing.assert_close(state_scan(m, zero, reverse=False)[-1], m[:-1].sum(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state_scan(m, zero, reverse=True)[0], m[1:].sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("c, d, decay", [pytest.param(1000, 64, True, id="C1000-d64-decay"),
                                          pytest.param(777, 128, False, id="C777-d128"),
                                          pytest.param(2048, 96, True, id="C2048-d96-decay")])
def test_triton_on_gpu(c, d, decay, dtype):
    q, k, v, do, ld = _inputs(2, c, 4, d, d, decay, seed=c, device="cuda")
    q, k = q / d ** 0.5, k / d ** 0.5  # keep the scores O(1) so relative errors are meaningful
    want = _reference(q, k, v, do, ld)
    low = [t.to(dtype) for t in (q, k, v, do)]
    got = [intra_chunk_fwd(*low[:3], log_decay=ld, backend="auto"), *intra_chunk_bwd(*low, log_decay=ld)]
    for name, a, w in zip(("o", "dq", "dk", "dv"), got, want):
        assert _rel(a, w) < TOL_CUDA[dtype], (name, _rel(a, w))
