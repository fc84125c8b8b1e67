"""Block attention kernels: the torch reference against float64 math, the Triton kernels (under
TRITON_INTERPRET=1 on CPU: fp32/fp16) against the reference for every mask kind, GQA and odd head
dims, the merge, and (cuda-marked) bf16/fp16 at realistic sizes within 2x the error of PyTorch SDPA."""
import math

import pytest
import torch

from odysseus_kernels.kernels.attention import attention_block_bwd, attention_block_fwd, attention_ref, merge_attention
from odysseus_kernels.kernels.attention.reference import block_mask
from tests.triton_device import DEVICE

# id, (sq, sk, h, hk, d, dv), mask kwargs
CASES = [
    pytest.param((63, 37, 4, 1, 24), dict(causal=False), id="S63-K37-GQA4-D24-full"),
    pytest.param((63, 63, 4, 2, 24), dict(causal=True), id="S63-D24-causal"),
    pytest.param((20, 30, 2, 1, 16), dict(causal=True, q_offset=40, k_offset=25), id="causal-q-after-k"),
    pytest.param((20, 30, 2, 2, 8), dict(causal=True, q_offset=10, k_offset=20), id="causal-partly-no-keys"),
    pytest.param((16, 16, 2, 2, 16), dict(causal=True, q_offset=0, k_offset=40), id="causal-all-masked"),
    pytest.param((33, 33, 2, 1, 12), dict(window=(5, -1), causal=True), id="window-left"),
    pytest.param((33, 40, 2, 2, 12), dict(window=(4, 3)), id="window-both"),
    pytest.param((40, 40, 2, 1, 16), dict(causal=True, cu_seqlens=(0, 7, 30, 40)), id="docs-causal"),
]
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3)}


def _inputs(shape, dtype, seed=0):
    sq, sk, h, hk, d = shape
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(2, sq, h, d), mk(2, sk, hk, d), mk(2, sk, hk, d), mk(2, sq, h, d)


@pytest.mark.parametrize("shape, mask", CASES)
def test_reference_matches_float64_math(shape, mask):
    q, k, v, do = _inputs(shape, torch.float64)
    out, lse = attention_block_fwd(q, k, v, backend="torch", **mask)
    scale = 1 / math.sqrt(q.shape[-1])
    m = block_mask(q.shape[1], k.shape[1], **{"causal": False, **mask})
    hk = k.shape[2]
    kk, vv = k.repeat_interleave(q.shape[2] // hk, 2), v.repeat_interleave(q.shape[2] // hk, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) * scale
    if m is not None:
        s = s.masked_fill(~m, float("-inf"))
    want_lse = torch.logsumexp(s, -1)
    p = torch.nan_to_num(torch.softmax(s, -1))
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", p, vv), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)
    assert not out.isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape, mask", CASES)
def test_triton_forward_and_backward_match_the_reference(shape, mask, dtype):
    """In the interpreter on CPU, or compiled on the GPU when there is one (tests/triton_device.py)."""
    q, k, v, do = _inputs(shape, dtype, seed=1)
    o_ref, l_ref = attention_block_fwd(q, k, v, backend="torch", **mask)
    g_ref = attention_block_bwd(do, q, k, v, o_ref, l_ref, backend="torch", **mask)
    qc, kc, vc, dc = (t.to(DEVICE, dtype) for t in (q, k, v, do))
    o, lse = attention_block_fwd(qc, kc, vc, backend="triton", **mask)
    assert o.dtype == dtype and lse.dtype == torch.float32 and o.device == qc.device
    o, lse_host = o.cpu(), lse.cpu()
    assert torch.equal(torch.isinf(lse_host), torch.isinf(l_ref))  # rows that see no key: lse = -inf, out = 0
    atol, rtol = TOL[dtype]
    fin = lambda t: torch.where(torch.isinf(t), torch.zeros_like(t), t)  # noqa: E731
    torch.testing.assert_close(o.double(), o_ref, atol=atol * 10, rtol=rtol * 10)
    torch.testing.assert_close(fin(lse_host).double(), fin(l_ref), atol=atol * 10, rtol=rtol * 10)
    grads = attention_block_bwd(dc, qc, kc, vc, o.to(DEVICE), lse, backend="triton", grad_dtype=torch.float32,
                                **mask)
    for got, want in zip(grads, g_ref):
        assert not got.isnan().any()
        torch.testing.assert_close(got.cpu().double(), want, atol=atol * 50, rtol=rtol * 50)


def test_merge_of_disjoint_key_blocks_equals_attention_over_the_union():
    q, k, v, _ = _inputs((24, 40, 2, 2, 8), torch.float64, seed=2)
    whole, lse_whole = attention_block_fwd(q, k, v, causal=True, q_offset=16, k_offset=0)
    out, lse = attention_block_fwd(q, k[:, :10], v[:, :10], causal=True, q_offset=16, k_offset=0)
    for a, b in ((10, 25), (25, 40)):  # the last block is invisible to the first queries: lse -inf rows
        o2, l2 = attention_block_fwd(q, k[:, a:b], v[:, a:b], causal=True, q_offset=16, k_offset=a)
        merge_attention(out, lse, o2, l2)
    torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, lse_whole, rtol=1e-12, atol=1e-12)
    # both sides -inf: stays -inf, never NaN
    o, l_ = torch.zeros(1, 3, 1, 4, dtype=torch.float64), torch.full((1, 1, 3), float("-inf"), dtype=torch.float64)
    merge_attention(o, l_, torch.zeros_like(o), l_.clone())
    assert torch.isinf(l_).all() and not o.isnan().any()


def test_reference_gradients_match_autograd():
    q, k, v, do = _inputs((17, 17, 4, 2, 6), torch.float64, seed=3)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    attention_ref(*leaves, causal=True, window=(4, -1)).backward(do)
    out, lse = attention_block_fwd(q, k, v, causal=True, window=(4, -1))
    for got, leaf in zip(attention_block_bwd(do, q, k, v, out, lse, causal=True, window=(4, -1)), leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_realistic_sizes_within_twice_sdpa_error(dtype, causal):
    torch.manual_seed(0)
    b, s, h, hk, d = 2, 2048, 16, 4, 128
    q = torch.randn(b, s, h, d, device="cuda", dtype=torch.float64)
    k, v = (torch.randn(b, s, hk, d, device="cuda", dtype=torch.float64) for _ in range(2))
    do = torch.randn(b, s, h, d, device="cuda", dtype=torch.float64)
    ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
    attention_ref(*ref, causal=causal).backward(do)
    o_ref = attention_ref(q, k, v, causal=causal)
    low = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in low), is_causal=causal, enable_gqa=True).transpose(1, 2)
    sdpa.backward(do.to(dtype).transpose(1, 2).transpose(1, 2))
    out, lse = attention_block_fwd(*(t.detach() for t in low), causal=causal, backend="triton")
    grads = attention_block_bwd(do.to(dtype), *(t.detach() for t in low), out, lse, causal=causal, backend="triton")
    assert (out.double() - o_ref).abs().max() <= 2 * (sdpa.double() - o_ref).abs().max() + 1e-6
    for got, lo, r in zip(grads, low, ref):
        assert (got.double() - r.grad).abs().max() <= 2 * (lo.grad.double() - r.grad).abs().max() + 1e-6


def test_flash_attn_backend_is_explicit_and_refuses_what_it_cannot_express():
    from odysseus_kernels.kernels.attention import flash_attn as fa

    q, k, v, _ = _inputs((8, 12, 2, 2, 16), torch.float16)
    with pytest.raises(ValueError, match="cannot express this mask"):
        attention_block_fwd(q.half(), k.half(), v.half(), causal=True, q_offset=5, k_offset=0, backend="flash_attn")
    if fa.flash_attn is None:
        with pytest.raises(ImportError, match="pip install 'odysseus-kernels\\[flash\\]'"):
            attention_block_fwd(q.half(), k.half(), v.half(), backend="flash_attn")
    assert fa.expressible(8, 12, True, 4, 0, (-1, -1), None) and not fa.expressible(8, 8, False, 0, 0, (-1, -1), (0, 8))


@pytest.mark.cuda
def test_cuda_flash_attn_backend_matches_the_reference():
    pytest.importorskip("flash_attn")
    q, k, v, do = (t.cuda() for t in _inputs((256, 256, 8, 2, 64), torch.float64, seed=4))
    o_ref, l_ref = attention_block_fwd(q, k, v, causal=True, backend="torch")
    g_ref = attention_block_bwd(do, q, k, v, o_ref, l_ref, causal=True, backend="torch")
    qb, kb, vb, db = (t.bfloat16() for t in (q, k, v, do))
    o, lse = attention_block_fwd(qb, kb, vb, causal=True, backend="flash_attn")
    torch.testing.assert_close(o.double(), o_ref, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(lse.double(), l_ref, atol=3e-2, rtol=3e-2)
    for got, want in zip(attention_block_bwd(db, qb, kb, vb, o, lse, causal=True, backend="flash_attn"), g_ref):
        torch.testing.assert_close(got.double(), want, atol=6e-2, rtol=6e-2)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_cpu_flash_path_of_the_torch_backend_matches_the_reference(causal, dtype):
    from odysseus_kernels.kernels.attention import cpu_flash
    from odysseus_kernels.kernels.attention.reference import attention_block_bwd_torch, attention_block_fwd_torch

    q, k, v, do = (t.to(dtype) for t in _inputs((37, 37, 3, 3, 16), torch.float64, seed=4))
    assert cpu_flash.eligible(q, k, v, causal=causal, q_offset=0, k_offset=0, window=(-1, -1), cu_seqlens=None)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    out, lse = attention_block_fwd(q, k, v, causal=causal, backend="torch")
    o_ref, l_ref = attention_block_fwd_torch(q, k, v, causal=causal)
    torch.testing.assert_close(out, o_ref, **tol)
    torch.testing.assert_close(lse, l_ref, **tol)
    # a block of the keys, given the rows' final out/lse (what the ring backward asks)
    got = attention_block_bwd(do, q, k[:, :20], v[:, :20], out, lse, causal=causal, backend="torch")
    want = attention_block_bwd_torch(do, q, k[:, :20], v[:, :20], o_ref, l_ref, causal=causal)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


def test_document_ids_from_host_boundaries_are_built_once():
    """``cu_seqlens`` given as host boundaries: a block's document ids are computed and uploaded once and
    reused (on a GPU a per-launch upload would be a blocking copy, which CUDA graphs cannot hold)."""
    from odysseus_kernels.kernels.attention.triton_attention import _doc_ids

    a = _doc_ids([0, 7, 30, 40], 5, 20, DEVICE)
    assert _doc_ids((0, 7, 30, 40), 5, 20, DEVICE) is a
    assert a.dtype == torch.int32 and a.cpu().tolist() == [1, 1] + [2] * 18
    t = _doc_ids(torch.tensor([0, 7, 30, 40], device=DEVICE), 5, 20, DEVICE)  # a tensor: on its device, as given
    assert torch.equal(t.cpu(), a.cpu()) and _doc_ids(None, 0, 3, DEVICE) is None
