"""Shard-local linear-attention kernels: the chunked torch path (float64, exact) and the Triton
kernels (interpreter on CPU: fp32/fp16; bf16/fp32 on a GPU) against the float64 O(L^2) formula:
output and the gradient of every input (q, k, v, per-token ``g``, per-head ``g_gamma``), without
decay, with a constant or a per-token decay (or both), odd head dims, lengths that are not multiples
of the chunk, with the interpreter's launch config and with the sm_90 row of the table; each Triton
step against its torch twin; the diagonal token by token; the state scan (per-head and per-rank
decays); the launch-config table (deterministic pick, every launchable config in ``gate_cases``,
grid size at B=1, H=16, 8K tokens)."""
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
from odysseus_kernels.kernels.linear_attention import configs, gate
from tests.triton_device import DEVICE, needs_interpreter

# max |got - ref| / max |ref|, per dtype (fp32 is exact fp32 on a GPU too: input_precision="ieee")
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 3e-3}
TOL_CUDA = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _inputs(b, c, h, dk, dv, decay, seed, device="cpu"):
    """q, k, v, dO and the decays for ``decay`` in none / g_gamma / g / both (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(b, c, h, d, generator=gen, dtype=torch.float64).to(device) for d in (dk, dk, dv, dv))
    g = (-torch.rand(b, c, h, generator=gen, dtype=torch.float64) * 0.3).to(device) if decay in ("g", "both") else None
    gg = (-torch.rand(h, generator=gen, dtype=torch.float64) * 0.3).to(device) if decay in ("g_gamma", "both") else None
    return q, k, v, do, g, gg


def _reference(q, k, v, do, g, gg):
    """Output and the q, k, v, g, g_gamma gradients of the float64 O(L^2) formula, and the scale of
    the decay gradients' summands (see :func:`_compare`)."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    dec = [None if t is None else t.clone().requires_grad_(True) for t in (g, gg)]
    o = linear_attention_ref(*leaves, g=dec[0], g_gamma=dec[1])
    o.backward(do)
    # dg_s = sum_{t>=s} (q_t . dq_t - k_t . dk_t) cancels heavily; its natural error scale is the
    # same sum of absolute products
    absum = (q.abs() * leaves[0].grad.abs()).sum(-1) + (k.abs() * leaves[1].grad.abs()).sum(-1)
    cond = absum.flip(1).cumsum(1).flip(1)
    scales = [None] * 4 + [cond.max(), cond.sum((0, 1)).max()]
    return [o.detach()] + [t.grad for t in leaves] + [None if t is None else t.grad for t in dec], scales


def _rel(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def _compare(got, ref, tol):
    """Relative to max |reference|; the decay gradients relative to the scale of their summands."""
    want, scales = ref
    names = ("o", "dq", "dk", "dv", "dg", "dg_gamma")
    for name, a, w, sc in zip(names, got, want, scales):
        if w is None:
            assert a is None, name
            continue
        assert a.shape == w.shape, (name, a.shape, w.shape)
        err = _rel(a, w) if sc is None else ((a.double() - w).abs().max() / sc).item()
        assert err < tol, (name, err)


TRITON_CASES = [
    pytest.param(37, 8, 12, "none", id="C37-dk8-dv12"),
    pytest.param(70, 16, 8, "g_gamma", id="C70-dk16-dv8-g_gamma"),
    pytest.param(50, 24, 40, "g", id="C50-dk24-dv40-g"),
    pytest.param(16, 5, 7, "both", id="C16-dk5-dv7-both"),
    pytest.param(45, 33, 20, "g", id="C45-dk33-dv20-g"),
    pytest.param(33, 64, 64, "g_gamma", id="C33-d64-g_gamma"),
]


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("c, dk, dv, decay", TRITON_CASES)
def test_triton_matches_the_float64_formula(c, dk, dv, decay, dtype):
    """In the interpreter on CPU, or compiled on the GPU when there is one (tests/triton_device.py)."""
    q, k, v, do, g, gg = _inputs(1, c, 2, dk, dv, decay, seed=c + dk, device=DEVICE)
    low = [t.to(dtype) for t in (q, k, v, do)]
    # the reference sees the same (rounded) inputs: what is measured is the kernels' error
    want = _reference(*(t.double() for t in low), g, gg)
    out = intra_chunk_fwd(*low[:3], g=g, g_gamma=gg, backend="triton")
    grads = intra_chunk_bwd(*low, g=g, g_gamma=gg, backend="triton")
    assert out.dtype == torch.float32 and all(t.dtype == torch.float32 for t in grads[:3])
    _compare((out, *grads), want, TOL[dtype])


@pytest.mark.parametrize("decay", ["none", "g"])
def test_triton_with_the_gpu_launch_config(decay):
    """The sm_90 row (64-token chunks, 64-lane tiles) at head dims 128 and 72: two K/V tiles, one
    partly masked; a ragged last chunk (in the interpreter on CPU, compiled on a GPU)."""
    cfg = configs.pick(90, torch.float32, 128)
    assert (cfg.bt, cfg.bk, cfg.bv) == (64, 64, 64)
    q, k, v, do, g, gg = _inputs(1, 100, 2, 128, 72, decay, seed=3, device=DEVICE)
    want = _reference(q, k, v, do, g, gg)
    low = [t.float() for t in (q, k, v, do)]
    got = (intra_chunk_fwd(*low[:3], g=g, g_gamma=gg, backend="triton", config=cfg),
           *intra_chunk_bwd(*low, g=g, g_gamma=gg, backend="triton", config=cfg))
    _compare(got, want, TOL[torch.float32])


@pytest.mark.parametrize("decay", ["none", "g_gamma", "g", "both"])
@pytest.mark.parametrize("block", [1, 7, 64, 100])
def test_torch_chunked_path_is_exact(block, decay):
    q, k, v, do, g, gg = _inputs(2, 53, 3, 9, 6, decay, seed=block)
    want = _reference(q, k, v, do, g, gg)
    want = (want[0], [None] * 6)  # float64: every gradient relative to its own maximum
    got = [intra_chunk_fwd(q, k, v, g=g, g_gamma=gg, block=block, backend="torch"),
           *intra_chunk_bwd(q, k, v, do, g=g, g_gamma=gg, block=block, backend="torch")]
    assert got[0].dtype == torch.float64
    _compare(got, want, TOL[torch.float64])


@needs_interpreter  # the torch twins chunk like the interpreter's launch config
@pytest.mark.parametrize("decay", ["g_gamma", "g"])
def test_triton_steps_match_their_torch_twins(decay):
    """Chunk states, the shard state M, state gradients and G, one by one (ragged last chunk)."""
    q, k, v, do, g, gg = _inputs(2, 41, 1, 12, 20, decay, seed=7)
    qf, kf, vf, dof = (t.float() for t in (q, k, v, do))
    bt = configs.INTERPRET.bt
    for (h_t, m_t), (h_r, m_r) in [(chunk_fwd_h(kf, vf, g=g, g_gamma=gg, backend="triton"),
                                    chunk_fwd_h(k, v, g=g, g_gamma=gg, block=bt, backend="torch")),
                                   (chunk_bwd_dh(qf, dof, g=g, g_gamma=gg, backend="triton"),
                                    chunk_bwd_dh(q, do, g=g, g_gamma=gg, block=bt, backend="torch"))]:
        assert h_t.shape == h_r.shape == (2, 1, 3, 12, 20) and m_t.shape == m_r.shape == (2, 1, 12, 20)
        assert h_t.dtype == m_t.dtype == torch.float32  # states are fp32 whatever the input dtype
        assert _rel(h_t, h_r) < TOL[torch.float32] and _rel(m_t, m_r) < TOL[torch.float32]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("decay", ["g_gamma", "g"])
def test_exact_at_every_token_including_the_diagonal(backend, decay):
    # a known public implementation is causal only at chunk granularity and drops the diagonal block
    q, k, v, _, g, gg = _inputs(1, 40, 2, 8, 8, decay, seed=1, device="cpu" if backend == "torch" else DEVICE)
    dt = torch.float64 if backend == "torch" else torch.float32
    o = intra_chunk_fwd(q.to(dt), k.to(dt), v.to(dt), g=g, g_gamma=gg, block=16, backend=backend)
    tok = g[0] if g is not None else gg.expand(40, 2)  # [L, H] per-token log-decay
    cum = tok.cumsum(0)
    for t in (0, 15, 16, 37, 39):  # chunk edges and the ragged last chunk
        want = sum(torch.exp(cum[t] - cum[s]).view(-1, 1) * (q[0, t] * k[0, s]).sum(-1, keepdim=True) * v[0, s]
                   for s in range(t + 1))
        assert _rel(o[0, t], want) < TOL[dt], t


@needs_interpreter  # CPU tensors through the Triton path
def test_empty_inputs_give_empty_outputs():
    for shape in ((0, 5, 2, 8), (1, 0, 2, 8)):
        q = torch.randn(shape)
        g = torch.zeros(shape[:3])
        for be in ("torch", "triton"):
            o = intra_chunk_fwd(q, q, q, g=g, backend=be)
            dq, dk, dv, dg, _ = intra_chunk_bwd(q, q, q, q, g=g, backend=be)
            assert o.shape == dq.shape == dk.shape == dv.shape == shape and dg.shape == shape[:3]


def test_state_scan_is_the_exclusive_decayed_prefix_and_suffix():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(5, 2, 3, 4, 6, generator=gen, dtype=torch.float64)
    ld = -torch.rand(3, generator=gen, dtype=torch.float64)
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
    # per-rank decays [W, B, H]: S_(t+1) = a_t S_t + M_t and R_(t-1) = a_t R_t + M_t
    lr = -torch.rand(5, 2, 3, generator=gen, dtype=torch.float64)
    ar = torch.exp(lr)[..., None, None]
    pre, suf = state_scan(m, lr, reverse=False), state_scan(m, lr, reverse=True)
    for t in range(5):
        want_pre = sum((torch.prod(ar[j + 1:t], 0) * m[j] for j in range(t)), torch.zeros_like(m[0]))
        want_suf = sum((torch.prod(ar[t + 1:j], 0) * m[j] for j in range(t + 1, 5)), torch.zeros_like(m[0]))
        torch.testing.assert_close(pre[t], want_pre, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(suf[t], want_suf, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- launch-config table

def test_pick_is_deterministic_and_every_launchable_config_is_gated():
    from odysseus_kernels.kernels.linear_attention import triton_chunk as tc

    cases = gate.gate_cases()
    gated = {(c.archs[0], c.dtype, c.kernel, tuple(sorted(c.constexprs.items())), c.num_warps, c.num_stages)
             for c in cases}
    for arch in (90, 80):
        for dt, dtype in configs.DTYPES.items():
            assert {c.head_dim for c in cases if c.dtype == dt and c.archs == (arch,)} == {64, 128, 256}
            for d in (16, 32, 64, 96, 128, 256):
                cfg = configs.pick(arch, dtype, d)
                assert cfg == configs.pick(arch, dtype, d)
                for kernel in configs.KERNELS:
                    if kernel == "scan" and dt != "fp32":
                        continue  # the scan reads fp32 states only: gated once, as fp32
                    for dec in configs.DECAYS.values():
                        for flags in gate._variants(kernel):
                            cx = {**cfg.constexprs(kernel), "USE_G": dec[0], "USE_G_GAMMA": dec[1], **flags}
                            if kernel != "scan":
                                cx["IEEE"] = dt == "fp32"
                            key = (arch, dt, f"linear_attention._chunk_{kernel}_kernel", tuple(sorted(cx.items())),
                                   cfg.warps(kernel), cfg.stages(kernel))
                            assert key in gated, key
    for c in cases:  # the signature names every argument of the jitted function, in order
        assert list(c.signature) == list(c.fn.arg_names) and c.fn is tc.KERNELS[c.kernel.split("_chunk_")[1][:-7]]
    assert configs.pick(None, torch.float16, 64) is configs.INTERPRET


def test_grid_at_batch_1_16_heads_8k_tokens_fills_twice_the_sms():
    from odysseus_kernels.kernels.linear_attention.triton_chunk import launch_grids

    sms = 132  # H100 SXM / H200
    for arch in (90, 80):
        for dtype in configs.DTYPES.values():
            for d in (64, 128):
                grids = launch_grids(1, 8192, 16, d, d, configs.pick(arch, dtype, d))
                for name, grid in grids.items():
                    n = 1
                    for x in grid:
                        n *= x
                    assert n >= 2 * sms, (arch, dtype, d, name, grid)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("c, d, decay", [pytest.param(1000, 64, "g_gamma", id="C1000-d64-g_gamma"),
                                          pytest.param(777, 128, "none", id="C777-d128"),
                                          pytest.param(2048, 96, "g", id="C2048-d96-g"),
                                          pytest.param(300, 256, "both", id="C300-d256-both")])
def test_triton_on_gpu(c, d, decay, dtype):
    q, k, v, do, g, gg = _inputs(2, c, 4, d, d, decay, seed=c, device="cuda")
    q, k = q / d ** 0.5, k / d ** 0.5  # keep the scores O(1) so relative errors are meaningful
    want = _reference(q, k, v, do, g, gg)
    low = [t.to(dtype) for t in (q, k, v, do)]
    got = [intra_chunk_fwd(*low[:3], g=g, g_gamma=gg, backend="auto"),
           *intra_chunk_bwd(*low, g=g, g_gamma=gg)]
    _compare(got, want, TOL_CUDA[dtype])
