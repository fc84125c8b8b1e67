"""The multi-rank harness itself: results, rank failures, deadlocks, world sizes 1-4."""
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import RankError, WorldTimeout, run_world


def _rank_and_sum(x):
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    return dist.get_rank(), dist.get_world_size(), t.item(), x


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_results_come_back_from_every_rank(world_size):
    out = run_world(_rank_and_sum, world_size, "payload")
    total = world_size * (world_size - 1) / 2
    assert out == [(r, world_size, total, "payload") for r in range(world_size)]


def _fail_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("rank one is unhappy")
    return "fine"


def test_exception_on_one_rank_fails_with_its_traceback():
    with pytest.raises(RankError) as info:
        run_world(_fail_on_rank_one, 3)
    assert set(info.value.failures) == {1}
    assert "rank one is unhappy" in info.value.failures[1]
    # the pool recovers for the next test
    assert run_world(_rank_and_sum, 3, 1)[2] == (2, 3, 3.0, 1)


def _fail_then_hang_others():
    if dist.get_rank() == 0:
        raise RuntimeError("rank zero failed before the collective")
    dist.all_reduce(torch.ones(1))  # never completes: rank 0 is gone


def test_exception_before_a_collective_does_not_hang():
    t0 = time.monotonic()
    with pytest.raises(RankError) as info:
        run_world(_fail_then_hang_others, 2, timeout=60)
    assert "rank zero failed" in info.value.failures[0]
    assert time.monotonic() - t0 < 30


def _deadlock():
    buf = torch.zeros(4)
    if dist.get_rank() == 0:
        dist.recv(buf, src=1)  # rank 1 never sends
    else:
        dist.recv(buf, src=0)


def test_deadlock_fails_within_timeout():
    t0 = time.monotonic()
    with pytest.raises(WorldTimeout):
        run_world(_deadlock, 2, timeout=8)
    assert time.monotonic() - t0 < 30
    assert run_world(_rank_and_sum, 2, None)[0] == (0, 2, 1.0, None)


def _empty_is_nan():
    return bool(torch.empty(3).isnan().all()), bool(torch.empty_like(torch.ones(2)).isnan().all())


def test_workers_and_parent_fill_empty_with_nan():
    assert torch.empty(5).isnan().all()
    # a leaf that requires grad is filled too, not refused (torch 2.11's checkpoint allocates one)
    leaf = torch.empty((0,), requires_grad=True)
    assert leaf.is_leaf and leaf.requires_grad and leaf.grad_fn is None
    assert torch.empty(3, requires_grad=True).isnan().all()
    assert torch.ones(1).new_empty(2, requires_grad=True).isnan().all()
    assert run_world(_empty_is_nan, 2) == [(True, True)] * 2


# ---------------------------------------------------------------------------- every task starts clean

def _state():
    """What a task could leave behind, as this rank sees it."""
    import odysseus_kernels as ok
    from odysseus_kernels.comm import groups
    from tests.distributed import _groups

    return {"validation": ok.get_validation(), "timeout": ok.get_comm_timeout(),
            "dtype": str(torch.get_default_dtype()),
            "grad": torch.is_grad_enabled(), "group_info": groups.group_info.__module__,
            "all_reduce": dist.all_reduce.__module__, "nan_empty": bool(torch.empty(3).isnan().all()),
            "nan_new_empty": bool(torch.ones(1).new_empty(2).isnan().all()), "groups": len(_groups()),
            "cached_groups": len(groups._backends)}


def _dirty_task():
    """Changes every setting the harness restores, and makes a process group (used once)."""
    import odysseus_kernels as ok
    from odysseus_kernels.comm import groups

    before = _state()
    ok.set_validation("local")
    ok.set_comm_timeout(7.0)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    groups.group_info = lambda *a, **k: "patched"
    dist.all_reduce = lambda *a, **k: None
    torch.empty = torch.empty.__wrapped__  # un-NaN-fill
    torch.Tensor.new_empty = torch.Tensor.new_empty.__wrapped__
    g = dist.new_group(list(range(dist.get_world_size())))
    groups.backend_of(g)  # cached by comm
    dirty = _state()
    assert dirty != before and dirty["groups"] == before["groups"] + 1, dirty
    return before


def _cached_group_sum():
    from tests.distributed import world_cached

    g = world_cached("everyone", lambda: dist.new_group(list(range(dist.get_world_size()))))
    t = torch.ones(1)
    dist.all_reduce(t, group=g)
    return id(g), t.item()


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_task_does_not_leak_settings_patches_or_groups_into_the_next(world_size):
    before = run_world(_dirty_task, world_size)
    assert run_world(_state, world_size) == before
    assert before[0]["validation"] == "full" and before[0]["nan_empty"] and before[0]["dtype"] == "torch.float32"


def test_world_cached_groups_live_across_tasks():
    first = run_world(_cached_group_sum, 2)
    run_world(_state, 2)  # a task in between: the cached group is not destroyed with the leftovers
    assert run_world(_cached_group_sum, 2) == first and first[0][1] == 2.0
