"""Shard-local linear-attention kernels: the Triton fused-chunk kernels (interpreter on CPU:
fp32/fp16) against the float64 blocked reference, forward and backward, with and without decay,
odd head dims and lengths that are not multiples of the block; LASP-2 on the Triton backend."""
import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels.kernels.linear_attention import intra_chunk, intra_chunk_backward, linear_attention_ref
from odysseus_kernels.kernels.linear_attention.api import intra_chunk_bwd, intra_chunk_fwd
from tests.distributed import run_world

CASES = [pytest.param(37, 8, 12, False, 16, id="C37-dk8-dv12"), pytest.param(70, 16, 8, True, 16, id="C70-decay"),
         pytest.param(50, 12, 24, True, 64, id="C50-dk12-dv24-decay-blk64"),
         pytest.param(16, 5, 7, False, 16, id="C16-odd-dims"), pytest.param(64, 64, 64, True, 32, id="C64-d64")]
TOL = {torch.float32: 1e-5, torch.float16: 3e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("c, dk, dv, decay, block", CASES)
def test_triton_matches_the_reference(c, dk, dv, decay, block, dtype):
    g = torch.Generator().manual_seed(c)
    q, k, v, do = (torch.randn(2, c, 3, d, generator=g, dtype=torch.float64) for d in (dk, dk, dv, dv))
    ld = -torch.rand(3, generator=g, dtype=torch.float64) * 0.3 if decay else None
    ref = intra_chunk(q, k, v, log_decay=ld, block=block)
    torch.testing.assert_close(ref, linear_attention_ref(q, k, v, log_decay=ld), rtol=1e-12, atol=1e-12)
    grads_ref = intra_chunk_backward(q, k, v, do, log_decay=ld, block=block)
    low = [t.to(dtype) for t in (q, k, v, do)]
    got = intra_chunk_fwd(*low[:3], log_decay=ld, block=block, backend="triton")
    scale = ref.abs().max()
    assert ((got.double() - ref).abs().max() / scale) < TOL[dtype]
    for a, b in zip(intra_chunk_bwd(*low, log_decay=ld, block=block, backend="triton"), grads_ref):
        assert not a.isnan().any()
        assert ((a.double() - b).abs().max() / b.abs().max()) < TOL[dtype]


def _lasp2_triton():
    n = ok.group_info().size
    g = torch.Generator().manual_seed(3)
    q, k, v, do = (torch.randn(1, 24 * n, 2, 8, generator=g, dtype=torch.float64) for _ in range(4))
    decay = torch.tensor([-0.05, -0.2], dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = linear_attention_ref(*leaves, log_decay=decay)
    ref.backward(do)
    ls = [ok.shard_sequence(t).float().requires_grad_(True) for t in (q, k, v)]
    out = ok.lasp2_linear_attention(*ls, decay=decay.float(), backend="triton", block=16)
    out.backward(ok.shard_sequence(do).float())
    return max(((a.double() - ok.shard_sequence(b)).abs().max() / b.abs().max()).item()
               for a, b in zip([out] + [t.grad for t in ls], [ref.detach()] + [t.grad for t in leaves]))


@pytest.mark.parametrize("n", [2, 3])
def test_lasp2_on_the_triton_kernels(n):
    assert all(e < 1e-5 for e in run_world(_lasp2_triton, n, timeout=300))
