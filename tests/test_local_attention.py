"""``ok.local_attention`` (no communication) against the float64 reference: output, log-sum-exp and
gradients, with GQA, more keys than queries, windows, packed documents, causal and not; the torch
backend in float64/float32 and the Triton kernels (interpreter on CPU, fp32/fp16; compiled on a GPU);
empty inputs and bad input."""
import itertools

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels.kernels.attention.reference import attention_block_fwd_torch
from tests.triton_device import DEVICE

# (atol, rtol) against the float64 reference
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5), torch.float16: (2e-2, 2e-2)}
MASKS = {"full": dict(), "causal": dict(causal=True), "window": dict(causal=True, window_size=(3, 0)),
         "bidir-window": dict(window_size=(2, 1)), "docs": dict(causal=True, cu_seqlens=[0, 4, 5, 11])}
CASES = [("torch", torch.float64), ("torch", torch.float32), ("triton", torch.float32), ("triton", torch.float16)]


def _ref(q, k, v, causal=False, window_size=(-1, -1), cu_seqlens=None):
    return attention_block_fwd_torch(q, k, v, causal=causal, window=window_size, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("backend, dtype", CASES, ids=[f"{b}-{str(d)[6:]}" for b, d in CASES])
@pytest.mark.parametrize("mask, gqa", list(itertools.product(MASKS, (False, True))))
def test_matches_float64(backend, dtype, mask, gqa):
    kw = MASKS[mask]
    dev = DEVICE if backend == "triton" else torch.device("cpu")
    g = torch.Generator().manual_seed(11)
    h, hkv, d, s, sk = (6, 2, 7, 11, 11) if gqa else (3, 3, 16, 11, 11)
    if mask == "full":
        sk = 13  # more keys than queries (no mask: nothing to align)
    q, k, v, do = (torch.randn(2, n, hh, d, generator=g, dtype=torch.float64)
                   for n, hh in ((s, h), (sk, hkv), (sk, hkv), (s, h)))
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    ref, ref_lse = _ref(qr, kr, vr, **kw)
    ref.backward(do)
    ql, kl, vl = (t.to(dev, dtype).requires_grad_(True) for t in (q, k, v))
    out, lse = ok.local_attention(ql, kl, vl, return_lse=True, backend=backend, **kw)
    out.backward(do.to(dev, dtype))
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    atol, rtol = TOL[dtype]
    for got, want in ((out, ref), (lse, ref_lse), (ql.grad, qr.grad), (kl.grad, kr.grad), (vl.grad, vr.grad)):
        torch.testing.assert_close(got.detach().cpu().double(), want.detach(), atol=atol, rtol=rtol)


def test_empty_inputs_and_bad_input():
    for qs, ks in (((0, 4, 2, 8), (0, 4, 1, 8)), ((2, 0, 2, 8), (2, 0, 1, 8))):
        q, k = torch.randn(qs, requires_grad=True), torch.randn(ks, requires_grad=True)
        out, lse = ok.local_attention(q, k, k, causal=True, return_lse=True)
        out.sum().backward()
        assert out.shape == qs and lse.shape == (qs[0], qs[2], qs[1]) and q.grad.shape == qs and k.grad.shape == ks
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="divisible"):
        ok.local_attention(q, k, k)
    with pytest.raises(ValueError, match=r"\[batch, seq, heads, head_dim\]"):
        ok.local_attention(q[0], k[0], k[0])
    with pytest.raises(TypeError, match="share a dtype"):
        ok.local_attention(q, k[:, :, :1].double(), k[:, :, :1])
    with pytest.raises(TypeError, match="torch.Tensor"):
        ok.local_attention(q.tolist(), k, k)
