"""Sequence layouts: shard/gather round trips, the zigzag convention, gradients, bad lengths."""
import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.ops.layout import layout_chunks
from tests.distributed import run_world

WORLD_SIZES = [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)]


def test_layout_chunks_convention():
    assert layout_chunks("contiguous", 3) == [[0], [1], [2]]
    assert layout_chunks("zigzag", 3) == [[0, 5], [1, 4], [2, 3]]
    with pytest.raises(ValueError, match="layout must be one of"):
        layout_chunks("striped", 2)


def _check_layouts(seed):
    info = comm.group_info()
    n, r = info.size, info.rank
    g = torch.Generator().manual_seed(seed)
    b, L, h = 2, 12 * n, 3
    x = torch.randn(b, L, h, 5, generator=g, dtype=torch.float64)
    for layout in ("contiguous", "zigzag"):
        local = ok.shard_sequence(x, layout=layout)
        k = n if layout == "contiguous" else 2 * n
        c = L // k
        chunks = [r] if layout == "contiguous" else [r, 2 * n - 1 - r]
        expect = torch.cat([x[:, i * c:(i + 1) * c] for i in chunks], dim=1)
        assert torch.equal(local, expect)
        pos = ok.local_positions(local.shape[1], rank=r, world_size=n, layout=layout)
        assert torch.equal(x[:, pos], local)
        # gather_sequence inverts shard_sequence, also on another dim
        assert torch.equal(ok.gather_sequence(local, layout=layout), x)
        xt = x.transpose(0, 1).contiguous()  # sequence on dim 0
        assert torch.equal(ok.gather_sequence(ok.shard_sequence(xt, layout=layout, dim=0), layout=layout, dim=0), xt)
        # gradients: loss_r = sum(w_r * gathered) on every rank; the shard's grad is sum_r w_r at its tokens
        weights = [torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 7 + i), dtype=torch.float64)
                   for i in range(n)]
        leaf = local.clone().requires_grad_(True)
        (ok.gather_sequence(leaf, layout=layout) * weights[r]).sum().backward()
        expect_grad = sum(weights)[:, pos]
        torch.testing.assert_close(leaf.grad, expect_grad, rtol=1e-12, atol=1e-12)
    # zigzag and contiguous shards interoperate through the full sequence
    z = ok.shard_sequence(x, layout="zigzag")
    full = ok.gather_sequence(z, layout="zigzag")
    assert torch.equal(ok.shard_sequence(full, layout="contiguous"), ok.shard_sequence(x, layout="contiguous"))
    return True


def _check_bad_lengths():
    info = comm.group_info()
    n, r = info.size, info.rank
    errors = {}
    try:
        ok.shard_sequence(torch.zeros(1, 2 * n + 1, 2), layout="zigzag")
    except ValueError as e:
        errors["shard"] = str(e)
    # different shard lengths across ranks: every rank raises, nobody hangs
    try:
        ok.gather_sequence(torch.zeros(1, 4 if r == 0 else 6, 2))
    except ValueError as e:
        errors["gather"] = str(e)
    try:
        ok.gather_sequence(torch.zeros(1, 3, 2), layout="zigzag")
    except ValueError as e:
        errors["odd_zigzag"] = str(e)
    return errors


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_layouts_round_trip_and_gradients(n):
    assert run_world(_check_layouts, n, 100 + n) == [True] * n


def _check_packed(seed):
    """shard_packed / gather_packed in every layout: the tokens are the stream's at ``meta.positions``,
    the round trip is exact, gradients sum over the ranks at each token, an empty batch passes."""
    info = comm.group_info()
    n, r = info.size, info.rank
    g = torch.Generator().manual_seed(seed)
    cu = [0, 2 * n, 6 * n, 12 * n]  # every document length divides by 2N (the doc_* layouts need it)
    x = torch.randn(2, 12 * n, 3, generator=g, dtype=torch.float64)
    weights = [torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 7 + i), dtype=torch.float64)
               for i in range(n)]
    for layout in ("contiguous", "zigzag", "doc_contiguous", "doc_zigzag"):
        local, meta = ok.shard_packed(x, cu, layout=layout)
        assert meta.layout == layout and tuple(meta.cu_seqlens) == tuple(cu)
        assert torch.equal(local, x[:, meta.positions])
        doc_start = torch.tensor(cu)[torch.searchsorted(torch.tensor(cu), meta.positions, right=True) - 1]
        assert torch.equal(meta.position_ids, meta.positions - doc_start)
        assert torch.equal(ok.gather_packed(local, meta), x)
        leaf = local.clone().requires_grad_(True)
        (ok.gather_packed(leaf, meta) * weights[r]).sum().backward()
        torch.testing.assert_close(leaf.grad, sum(weights)[:, meta.positions], rtol=1e-12, atol=1e-12)
        empty = x[:0].clone().requires_grad_(True)
        e_local, e_meta = ok.shard_packed(empty, cu, layout=layout)
        e_full = ok.gather_packed(e_local, e_meta)
        e_full.sum().backward()
        assert e_local.shape == (0,) + local.shape[1:] and e_full.shape == empty.shape == empty.grad.shape
    return True


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_packed_round_trip_and_gradients(n):
    assert run_world(_check_packed, n, 300 + n) == [True] * n


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_bad_lengths_raise_on_every_rank(n):
    for errors in run_world(_check_bad_lengths, n):
        assert f"sequence length {2 * n + 1} is not divisible by {2 * n}" in errors["shard"]
        assert "must be even, got 3" in errors["odd_zigzag"]
        if n > 1:
            assert "shape must be the same on every rank" in errors["gather"]
            assert "rank 0: (1, 4, 2)" in errors["gather"]


def test_default_layout_is_one_constant():
    import inspect

    assert ok.DEFAULT_LAYOUT == "contiguous"
    for fn in (ok.shard_sequence, ok.gather_sequence):
        assert inspect.signature(fn).parameters["layout"].default == ok.DEFAULT_LAYOUT


def _check_dim_and_empty():
    info = comm.group_info()
    n, r = info.size, info.rank
    out = {}
    x = torch.arange(2 * 4 * n * 3, dtype=torch.float64).reshape(2, 4 * n, 3)
    for dim in (3, -4, 7):  # out of range: ValueError on every rank, no modulo wrap
        for name, call in (("shard", lambda d: ok.shard_sequence(x, dim=d)),
                           ("gather", lambda d: ok.gather_sequence(x, dim=d)),
                           ("packed", lambda d: ok.shard_packed(x, [0, 4 * n], dim=d))):
            try:
                call(dim)
                out[(name, dim)] = "no error"
            except ValueError as e:
                out[(name, dim)] = str(e)
    # negative dims in range are the usual PyTorch convention
    assert torch.equal(ok.shard_sequence(x, dim=-2), ok.shard_sequence(x, dim=1))
    assert torch.equal(ok.gather_sequence(ok.shard_sequence(x, dim=-2), dim=-2), x)
    # empty tensors: batch 0 and zero-length sequences, forward and backward, both layouts
    for layout in ("contiguous", "zigzag"):
        for shape in ((0, 4 * n, 3), (2, 0, 3), (2, 4 * n, 0)):
            e = torch.zeros(shape, dtype=torch.float64)
            local = ok.shard_sequence(e, layout=layout)
            assert local.shape == (shape[0], shape[1] // n, shape[2])
            leaf = local.clone().requires_grad_(True)
            full = ok.gather_sequence(leaf, layout=layout)
            assert full.shape == shape
            full.sum().backward()
            assert leaf.grad.shape == leaf.shape
    # a valid call afterwards still works (the group stayed in step)
    assert torch.equal(ok.gather_sequence(ok.shard_sequence(x)), x)
    return out


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_dim_range_and_empty_tensors(n):
    for out in run_world(_check_dim_and_empty, n):
        for (name, dim), msg in out.items():
            fn = {"shard": "shard_sequence", "gather": "gather_sequence", "packed": "shard_packed"}[name]
            assert msg == f"{fn}: dim={dim} is out of range for a 3-D tensor (expected -3 <= dim < 3)", (name, dim, msg)
