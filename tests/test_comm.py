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
    # the other reductions, into a strided output view; an unsupported one raises before communicating
    import torch.distributed as dist

    for op, ref in ((dist.ReduceOp.AVG, full.mean(0)), (dist.ReduceOp.MAX, full.amax(0)),
                    (dist.ReduceOp.MIN, full.amin(0)), (dist.ReduceOp.PRODUCT, full.prod(0))):
        out = torch.zeros(4, 2).t()
        assert comm.reduce_scatter_async(out, full[r].clone(), op=op).wait() is out
        torch.testing.assert_close(out, ref[2 * r: 2 * r + 2], rtol=1e-6, atol=1e-6)
    # a non-contiguous input; bad arguments raise before communicating (on every world size)
    got = comm.reduce_scatter_async(torch.empty(2, 4), full[r].t().contiguous().t()).wait()
    torch.testing.assert_close(got, full.sum(0)[2 * r: 2 * r + 2], rtol=1e-6, atol=1e-6)
    with ok.comm_ledger() as led:
        for out, inp, op, match in (
                (torch.empty(2, 4), full[r].clone(), dist.ReduceOp.BAND, "supports"),
                (torch.empty(2, 4, dtype=torch.int32), torch.ones(2 * n, 4, dtype=torch.int32), dist.ReduceOp.AVG,
                 "floating"),
                (torch.empty(2, 4, dtype=torch.int32), full[r].clone(), dist.ReduceOp.SUM, "dtype"),
                (torch.empty(3, 4), full[r].clone(), dist.ReduceOp.SUM, "elements")):
            with pytest.raises(ValueError, match=match):
                comm.reduce_scatter_async(out, inp, op=op)
    assert led.bytes_received == led.bytes_sent == 0

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


def _check_ring_exchange_via_host():
    """The host-staged exchange (CUDA tensors on a gloo group) forced on CPU tensors: the same values and
    bytes, every receive written back into the caller's buffer (also a strided one) only at ``wait()``."""
    from odysseus_kernels.comm import p2p

    staged = []
    p2p._via_host = lambda info, dev: staged.append(dev) or True  # restored by the harness
    assert _check_ring_exchange()
    info = comm.group_info()
    assert bool(staged) == (info.size > 1)  # a world of one posts nothing
    x = _payload(info.rank, (6, 4)).t()  # not contiguous
    y = torch.zeros(6, 4).t()
    h = comm.ring_exchange(send_next=x, recv_prev=y)
    got, _ = h.wait()
    assert got is y
    torch.testing.assert_close(y, _payload(info.prev, (6, 4)).t(), rtol=0, atol=0)
    return True


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_exchange_through_host_memory(n):
    assert run_world(_check_ring_exchange_via_host, n) == [True] * n


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


# ---- control plane on the CPU (#18.1), validation switch, values in the digest ------------------

def _check_control_plane_side_group():
    import torch.distributed as dist

    from odysseus_kernels.comm import groups, validate

    info = comm.group_info()
    n, r = info.size, info.rank
    g = dist.new_group(list(range(n)))
    assert comm.control_group(g) is g  # a gloo group carries its own control traffic
    # Pretend g is NCCL-backed (the backend query is cached per group): the check must use a CPU
    # gloo side group over the same ranks, created once and cached, and CPU tensors only.
    groups._backends[g] = "nccl"
    calls = []
    name = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
    real = getattr(dist, name)

    def spy(out, inp, group=None, async_op=False):
        calls.append((group, out.device.type, inp.device.type))
        return real(out, inp, group=group, async_op=async_op)

    setattr(dist, name, spy)
    try:
        with comm.rank_consistent("demo_op", g) as check:
            check.meta(shape=(2, 3))
        side = comm.control_group(g)
        try:  # the mismatch path (exchange of metadata) runs on the side group as well
            with comm.rank_consistent("demo_op", g) as check:
                check.meta(scale=0.5 if r else 0.25)
        except ValueError as e:
            mismatch = str(e)
        assert side is not g and side is comm.control_group(g)  # cached
    finally:
        setattr(dist, name, real)
        groups._backends.pop(g, None)
    assert str(dist.get_backend(side)) == "gloo"
    assert dist.get_world_size(side) == n and dist.get_rank(side) == r
    assert calls and all(c == (side, "cpu", "cpu") for c in calls), calls
    assert validate.control_device(info).type == "cpu"
    return mismatch


def test_control_plane_of_an_nccl_group_is_a_cpu_side_group():
    res = run_world(_check_control_plane_side_group, 2)
    assert res == ["demo_op: scale must be the same on every rank of the group, got rank 0: 0.25, rank 1: 0.5"] * 2


def _check_values_in_digest():
    info = comm.group_info()
    n, r = info.size, info.rank
    out = {}
    same = torch.linspace(-1, 0, 20, dtype=torch.float64)
    with ok.comm_ledger() as led:
        with comm.rank_consistent("demo_op") as check:
            check.meta(decay=same, cu_seqlens=[0, 4, 8], window_size=(3, 0), bf=same.to(torch.bfloat16))
    assert led.received("metadata") == 8 * (n - 1)
    for key, val in [("decay", same + (1e-12 if r == n - 1 else 0)),              # a large tensor
                     ("small", torch.tensor([0.5, 1.0 + (r == n - 1)])),           # printed in full
                     ("bf", same.to(torch.bfloat16) * (2 if r == n - 1 else 1)),
                     ("cu_seqlens", [0, 4, 8] if r < n - 1 else [0, 5, 8]),
                     ("window_size", (3, 0) if r < n - 1 else (2, 0))]:
        try:
            with comm.rank_consistent("demo_op") as check:
                check.meta(**{key: val})
        except ValueError as e:
            out[key] = str(e)
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_values_in_the_digest_are_checked(n):
    res = run_world(_check_values_in_digest, n)
    assert res[0] == res[-1]
    msgs = res[0]
    assert set(msgs) == {"decay", "small", "bf", "cu_seqlens", "window_size"}, msgs
    for key, msg in msgs.items():
        assert msg.startswith(f"demo_op: {key} must be the same on every rank of the group, got rank 0: ")
    assert "tensor([0.5, 1.0], dtype=torch.float32" in msgs["small"]
    assert "tensor([0.5, 2.0], dtype=torch.float32" in msgs["small"]
    assert "[0, 5, 8]" in msgs["cu_seqlens"] and "(2, 0)" in msgs["window_size"]


def _check_validation_switch():
    import torch.distributed as dist

    info = comm.group_info()
    r = info.rank
    assert ok.get_validation() == "full"
    with ok.validation("local"):
        assert ok.get_validation() == "local"
        with ok.comm_ledger() as led:
            with comm.rank_consistent("demo_op") as check:
                check.meta(shape=(r,))  # differs, not detected: no collective
        assert led.bytes_received == 0
    assert ok.get_validation() == "full"
    ok.set_validation("local")
    try:
        assert ok.get_validation() == "local"
    finally:
        ok.set_validation("full")
    with ok.skip_cross_rank_checks():
        assert ok.get_validation() == "local"
    try:
        ok.set_validation("none")
    except ValueError as e:
        bad = str(e)
    dist.barrier()
    return bad


def test_validation_switch():
    res = run_world(_check_validation_switch, 2)
    assert res == ["set_validation: mode must be one of ('full', 'local'), got 'none'"] * 2


# ---- bounded failure (#19.4) --------------------------------------------------------------------

BOUND = 3.0


def _timeout_scenario(scenario: str):
    """On a fresh group (a timed-out group is out of step and is discarded), one rank fails:
    - ``skip``: the last rank skips the op (the others wait in its cross-rank check);
    - ``raise``: rank 1 raises at its second exchange of a 2-step ring (mid-op);
    - ``collective``: rank 0 skips an all-gather after the check.
    Returns what each rank raised and after how long."""
    import time

    import torch.distributed as dist

    info = comm.group_info()
    n, r = info.size, info.rank
    g = dist.new_group(list(range(n)))
    gi = comm.group_info(g)
    x = torch.full((4,), float(r))
    t0 = time.monotonic()
    try:
        with ok.comm_timeout(BOUND):
            if scenario == "skip" and r == n - 1:
                raise RuntimeError("skipped the call")
            with comm.rank_consistent("demo_op", g) as check:
                check.meta(shape=tuple(x.shape))
            if scenario.startswith("collective"):  # "collective" (an all-gather) or "collective:<kind>"
                kind = scenario.partition(":")[2] or "all_gather"
                if r == 0:
                    raise RuntimeError(f"skipped the {kind}")
                getattr(comm, kind)(torch.full((4 * n,), float(r)), group=g)
            for step in range(2):
                if scenario == "raise" and r == 1 and step == 1:
                    raise RuntimeError("injected failure mid-op")
                y = torch.empty_like(x)
                comm.ring_exchange(send_next=x, recv_prev=y, group=gi).wait()
                x = y
        return ("ok", "", time.monotonic() - t0, None)
    except TimeoutError as e:
        return (type(e).__name__, str(e), time.monotonic() - t0, (e.op, e.step, e.peers))
    except RuntimeError as e:
        return ("RuntimeError", str(e), time.monotonic() - t0, None)


def _after_timeout_a_new_group_works():
    import torch.distributed as dist

    n = comm.group_info().size
    g = dist.new_group(list(range(n)))
    assert comm.reduce_scatter(torch.ones(n), group=g).tolist() == [float(n)]  # not blocked by a stuck one
    return comm.all_gather(torch.tensor([1.0]), group=g).tolist()


def _polled_wait():
    """``wait_bounded(poll=True)`` ends a wait on gloo's own reduce-scatter (what CUDA tensors on gloo
    use), which ``wait(timeout=)`` does not: rank 1 never posts its side."""
    import time

    import torch.distributed as dist

    from odysseus_kernels.comm.timeout import wait_bounded

    g = dist.new_group([0, 1])
    info = comm.group_info(g)
    elapsed = None
    if info.rank == 0:
        w = dist.reduce_scatter_tensor(torch.empty(2), torch.ones(4), group=g, async_op=True)
        t0 = time.monotonic()
        with pytest.raises(ok.CommTimeout, match="timed out after 1.0 s waiting for the reduce_scatter"):
            wait_bounded([w], what="reduce_scatter", op="demo", step=0, info=info, seconds=1.0, poll=True)
        elapsed = time.monotonic() - t0
    comm.all_gather(torch.ones(1))  # then rank 1 posts its side late: the stuck work completes, and
    if info.rank == 1:  # the pooled world's later reduce-scatters (torch's FSDP2 uses gloo's) are free
        w = dist.reduce_scatter_tensor(torch.empty(2), torch.ones(4), group=g, async_op=True)
    w.wait()
    return elapsed


def test_a_polled_wait_is_bounded():
    elapsed = run_world(_polled_wait, 2, timeout=60)[0]
    assert 1.0 <= elapsed < 4.0, elapsed


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("scenario", ["skip", "raise", "collective"])
def test_one_failing_rank_gives_timeout_errors_within_the_bound(n, scenario):
    res = run_world(_timeout_scenario, n, scenario, timeout=60)
    failed = {"skip": n - 1, "raise": 1, "collective": 0}[scenario]
    for r, (kind, msg, elapsed, detail) in enumerate(res):
        if r == failed:
            assert kind == "RuntimeError" and ("skipped" in msg or "injected" in msg), (r, kind, msg)
            continue
        assert kind == "CommTimeout", (r, kind, msg)
        # every wait is bounded; a rank whose neighbour timed out may wait one more bound
        assert elapsed < (n - 1) * BOUND + 2.0, (r, elapsed)
        op, step, peers = detail
        assert f"timed out after {BOUND:.1f} s" in msg and "destroy and re-create" in msg
        if scenario == "skip":
            assert op == "demo_op" and step == "check" and msg.startswith("demo_op, step check:")
        elif scenario == "collective":
            assert op == "demo_op (forward)" and step == 0 and "all_gather" in msg and 0 in peers
        else:
            assert op == "demo_op (forward)" and step in (1, 2) and peers, detail
            assert all(f"rank {p}" in msg for p in peers)
        if scenario != "raise" or n == 2 or r == 2:
            assert elapsed < BOUND + 2.0, (r, elapsed)  # the ranks that wait on the failed one directly
    # the default group is still in step: a re-created group works
    assert run_world(_after_timeout_a_new_group_works, n) == [[1.0] * n] * n


@pytest.mark.parametrize("kind", ["reduce_scatter", "all_to_all", "all_reduce"])
def test_every_collective_kind_ends_within_the_bound(kind):
    """Each collective's wait is bounded on gloo. (gloo's own reduce-scatter ignores
    ``wait(timeout=)`` and, once stuck, blocks the process's later ones: on CPU the package's
    reduce-scatter is an all-to-all; the next test checks a new group's reduce-scatter works.)"""
    res = run_world(_timeout_scenario, 3, f"collective:{kind}", timeout=60)
    assert res[0][0] == "RuntimeError" and kind in res[0][1], res[0]
    for r in (1, 2):
        k, msg, elapsed, (op, step, peers) = res[r]
        assert k == "CommTimeout" and elapsed < BOUND + 2.0, (r, k, msg, elapsed)
        assert op == "demo_op (forward)" and step == 0 and f"waiting for the {kind}" in msg and 0 in peers, msg
    assert run_world(_after_timeout_a_new_group_works, 3) == [[1.0] * 3] * 3


def test_comm_timeout_setting():
    assert ok.get_comm_timeout() == 300.0 or "ODYSSEUS_COMM_TIMEOUT" in __import__("os").environ
    base = ok.get_comm_timeout()
    with ok.comm_timeout(5):
        assert ok.get_comm_timeout() == 5.0
        with ok.comm_timeout(2.5):
            assert ok.get_comm_timeout() == 2.5
        assert ok.get_comm_timeout() == 5.0
    assert ok.get_comm_timeout() == base
    ok.set_comm_timeout(42)
    try:
        assert ok.get_comm_timeout() == 42.0
    finally:
        ok.set_comm_timeout(base)
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite number of seconds > 0"):
            ok.set_comm_timeout(bad)
    with pytest.raises(TypeError):
        with ok.comm_timeout("3"):
            pass
    assert issubclass(ok.CommTimeout, TimeoutError)


def _op_timeout(where: str):
    """A real op (ring attention) with rank 1 failing: ``forward`` (its first exchange raises) or
    ``backward`` (it skips the backward). The others must raise CommTimeout naming the op."""
    import time

    import torch.distributed as dist

    n, r = comm.group_info().size, comm.group_info().rank
    g = dist.new_group(list(range(n)))
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    real = dist.batch_isend_irecv
    calls = [0]

    def failing(ops):
        calls[0] += 1
        if calls[0] == 1:  # after the check, at its first exchange
            raise RuntimeError("injected failure mid-op")
        return real(ops)

    t0 = time.monotonic()
    try:
        with ok.comm_timeout(BOUND):
            if where == "forward" and r == 1:
                dist.batch_isend_irecv = failing
            out = ok.ring_attention(q, k, v, group=g, causal=True)
            if where == "backward" and r == 1:
                raise RuntimeError("skipped the backward")
            out.sum().backward()
        return ("ok", "", time.monotonic() - t0, None)
    except TimeoutError as e:
        return (type(e).__name__, str(e), time.monotonic() - t0, e.op)
    except RuntimeError as e:
        return ("RuntimeError", str(e), time.monotonic() - t0, None)
    finally:
        dist.batch_isend_irecv = real


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_real_op_names_itself_in_the_timeout(where):
    res = run_world(_op_timeout, 2, where, timeout=60)
    assert res[1][0] == "RuntimeError"
    kind, msg, elapsed, op = res[0]
    assert kind == "CommTimeout" and elapsed < BOUND + 2.0, (kind, msg, elapsed)
    if where == "forward":
        assert op == "ring_attention (forward)", op
    else:  # the autograd node of the op (its backward), e.g. "ScheduledAttentionBackward (backward)"
        assert op.endswith("Backward (backward)"), op
    assert "with rank 1" in msg


def _forget_group_rank():
    import torch.distributed as dist

    parent = comm.new_group([0, 1])
    u = ok.usp_groups(2, parent)
    assert ok.usp_groups(2, parent) is u  # cached
    comm.forget_group(parent)
    u2 = ok.usp_groups(2, parent)  # rebuilt after forget
    assert u2 is not u and u2.ulysses_degree == 2
    for g in (u.ulysses_group, u.ring_group, u2.ulysses_group, u2.ring_group, parent):
        comm.forget_group(g)
        dist.destroy_process_group(g)
    return True


def test_forget_group_drops_the_cached_usp_groups():
    assert all(run_world(_forget_group_rank, 2, timeout=120))


def test_the_digest_cache_never_changes_a_digest():
    """``_Check.signed`` caches (fields, digest) of plain metadata: whatever was cached before, it must
    return exactly what hashing the values afresh gives (1, 1.0, True differ; 0.0 and -0.0 differ;
    tensors are never cached)."""
    from odysseus_kernels.comm.validate import _Check, _digest, _signed_cache

    values = [1, 1.0, True, 0, 0.0, -0.0, False, None, "1", (1, 2), (1.0, 2), (True, 2), torch.Size([1, 2]),
              float("nan"), torch.float32, torch.device("cpu"), (0.0,), (-0.0,), torch.tensor([1.0]),
              torch.tensor([1.0, 2.0]), [1, 2]]
    _signed_cache.clear()
    for order in (values, values[::-1], values):
        for v in order:
            c = _Check()
            c.meta(x=v, q=(2, 3))
            fields, digest = c.signed(None)
            assert fields == c.fields and digest == _digest(c.fields, None), (v, fields)
    assert len(_signed_cache) > 0
