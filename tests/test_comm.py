"""comm/: async collectives, the P2P ring exchange, the ledger and rank-consistent validation on
world sizes 1-4, values and bytes against closed forms."""
import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from tests.distributed import run_world

WORLD_SIZES = [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)]


def _payload(rank, shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(1234 + rank)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _check_collectives():
    info = comm.group_info()
    n, r = info.size, info.rank
    shape = (3, 5)
    mine = _payload(r, shape)
    everyone = [_payload(i, shape) for i in range(n)]
    s = mine.numel() * 4

    # all_gather: rank-major concatenation; (N-1)s each way
    with ok.comm_ledger() as led:
        out = torch.empty((n * 3, 5))
        h = comm.all_gather_async(out, mine)
        assert h.wait() is out
    torch.testing.assert_close(out, torch.cat(everyone), rtol=0, atol=0)
    assert (led.sent("all_gather"), led.received("all_gather")) == ((n - 1) * s, (n - 1) * s)

    # reduce_scatter: this rank's slice of the sum; (N-1)/N of the full buffer each way
    full = torch.stack([_payload(i, (n * 2, 4)) for i in range(n)])  # what each rank contributes
    with ok.comm_ledger() as led:
        got = comm.reduce_scatter(full[r].clone())
    torch.testing.assert_close(got, full.sum(0)[2 * r: 2 * r + 2], rtol=1e-6, atol=1e-6)
    big = n * 2 * 4 * 4
    assert led.received("reduce_scatter") == led.sent("reduce_scatter") == big * (n - 1) // n

    # all_to_all: chunk j of rank i lands as chunk i of rank j
    chunks = [[_payload(100 * i + j, (2, 3)) for j in range(n)] for i in range(n)]
    with ok.comm_ledger() as led:
        got = comm.all_to_all(torch.cat(chunks[r]))
    torch.testing.assert_close(got, torch.cat([chunks[i][r] for i in range(n)]), rtol=0, atol=0)
    assert led.received("all_to_all") == led.sent("all_to_all") == (n - 1) * 2 * 3 * 4

    # all_reduce: ring volume 2(N-1)/N of the buffer
    t = mine.clone()
    with ok.comm_ledger() as led:
        comm.all_reduce(t)
    torch.testing.assert_close(t, sum(everyone), rtol=1e-6, atol=1e-6)
    assert led.received("all_reduce") == 2 * s * (n - 1) // n

    # nothing recorded outside a ledger, nesting counts in both
    with ok.comm_ledger() as outer:
        with ok.comm_ledger() as inner:
            comm.all_gather(mine)
        comm.all_gather(mine)
    assert inner.received("all_gather") == (n - 1) * s
    assert outer.received("all_gather") == 2 * (n - 1) * s
    assert outer.bytes_received == outer.bytes_sent == 2 * (n - 1) * s
    return True


def _check_ring_exchange():
    info = comm.group_info()
    n, r = info.size, info.rank
    a, b = _payload(r, (4,)), _payload(50 + r, (2, 3), torch.float16)
    c = _payload(90 + r, (5,), torch.float64)
    ra, rb, _rc = torch.empty(4), torch.empty((2, 3), dtype=torch.float16), torch.empty(5, dtype=torch.float64)
    # forward direction only
    with ok.comm_ledger() as led:
        h = comm.ring_exchange(send_next=[a, b], recv_prev=[ra, rb])
        got = h.wait()
    assert got[0] == [ra, rb] and got[1] is None
    torch.testing.assert_close(ra, _payload(info.prev, (4,)), rtol=0, atol=0)
    torch.testing.assert_close(rb, _payload(50 + info.prev, (2, 3), torch.float16), rtol=0, atol=0)
    nb = 4 * 4 + 6 * 2
    assert (led.sent("p2p"), led.received("p2p")) == ((nb, nb) if n > 1 else (0, 0))
    # bidirectional: forward a, backward c, in one batch (also at N = 2 where next == prev)
    ra2, rc2 = torch.empty(4), torch.empty(5, dtype=torch.float64)
    with ok.comm_ledger() as led:
        h = comm.ring_exchange(send_next=a, recv_prev=ra2, send_prev=c, recv_next=rc2)
        h.wait()
    torch.testing.assert_close(ra2, _payload(info.prev, (4,)), rtol=0, atol=0)
    torch.testing.assert_close(rc2, _payload(90 + info.next, (5,), torch.float64), rtol=0, atol=0)
    nb = 4 * 4 + 5 * 8
    assert (led.sent("p2p"), led.received("p2p")) == ((nb, nb) if n > 1 else (0, 0))
    # a full rotation brings every tensor back home
    x = a.clone()
    for _ in range(n):
        y = torch.empty_like(x)
        comm.ring_exchange(send_next=x, recv_prev=y).wait()
        x = y
    torch.testing.assert_close(x, a, rtol=0, atol=0)
    with pytest.raises(ValueError, match="receive buffers"):
        comm.ring_exchange(send_next=[a, b], recv_prev=[ra])
    return True


def _check_validation():
    info = comm.group_info()
    n, r = info.size, info.rank
    results = {}
    # identical metadata: passes, costs one 8-byte all-gather
    with ok.comm_ledger() as led:
        with comm.rank_consistent("demo_op") as check:
            check.meta(shape=(2, 3), dtype=torch.float32, causal=True)
    assert led.received("metadata") == 8 * (n - 1)
    # shape differs on the last rank only: every rank raises the same message
    try:
        with comm.rank_consistent("demo_op") as check:
            check.meta(shape=(2, 3 if r < n - 1 else 4), causal=True)
    except ValueError as e:
        results["mismatch"] = str(e)
    # a local error on rank 0 only: every rank raises it (no hang)
    try:
        with comm.rank_consistent("demo_op") as check:
            check.meta(shape=(2, 3))
            if r == 0:
                raise TypeError("demo_op: q must be a tensor, got list")
    except TypeError as e:
        results["local"] = str(e)
    # the same error on every rank is raised unchanged
    try:
        with comm.rank_consistent("demo_op") as check:
            raise ValueError("demo_op: heads (5) must divide by kv heads (2)")
    except ValueError as e:
        results["same"] = str(e)
    # skip_cross_rank_checks: no collective
    with ok.comm_ledger() as led, ok.skip_cross_rank_checks():
        with comm.rank_consistent("demo_op") as check:
            check.meta(shape=(r,))
    assert led.bytes_received == 0
    return results


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_collectives_values_and_bytes(n):
    assert run_world(_check_collectives, n) == [True] * n
    assert run_world(_check_ring_exchange, n) == [True] * n


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_rank_consistent_validation_raises_everywhere(n):
    results = run_world(_check_validation, n)
    for r, res in enumerate(results):
        assert res["local"].startswith("demo_op: q must be a tensor, got list")
        assert res["same"] == "demo_op: heads (5) must divide by kv heads (2)"
        if n > 1:
            assert "raised on rank 0" in res["local"] or r == 0
            assert res["mismatch"] == (
                "demo_op: shape must be the same on every rank of the group, got "
                + ", ".join(f"rank {i}: {(2, 3) if i < n - 1 else (2, 4)}" for i in range(n)))
        else:
            assert "mismatch" not in res


def test_single_process_without_init_is_a_world_of_one():
    info = comm.group_info()
    assert (info.rank, info.size, info.next, info.prev) == (0, 1, 0, 0)
    x = torch.randn(2, 6, 3)
    assert ok.shard_sequence(x, layout="zigzag") is not x
    torch.testing.assert_close(ok.gather_sequence(ok.shard_sequence(x, layout="zigzag"), layout="zigzag"), x)
