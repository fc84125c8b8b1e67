"""The ring package (odysseus_kernels.ops.ring): a Rotation visits every rank in order without
touching the caller's tensor; a Relay sums one partial per rank on each owner (own partial first
with a final hop home, own partial last, a rotation cut short by a window, accumulated in place or
added, shipped in another dtype) with exactly ``steps - 1`` hops of bytes; the driver posts nothing
for a step without transfers; the P2P tags are named once and distinct where they travel together;
usp_groups returns the same groups on every call."""
import pathlib
import re

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.ops import ring
from odysseus_kernels.ops.ring import NOTHING, Relay, Rotation, Schedule, run_schedule, tags
from tests.distributed import run_world

SHAPE = (2, 3)


def _partial(rank: int, owner: int, world: int) -> torch.Tensor:
    """Integer-valued fp64 partial that rank ``rank`` computes for ``owner`` (sums are exact)."""
    return torch.arange(6, dtype=torch.float64).view(SHAPE) + 100 * rank + 10_000 * owner + world


def _rotation():
    info = comm.group_info()
    n = info.size
    mine = torch.full(SHAPE, float(info.rank))
    keep = mine.clone()
    seen = []
    rot = run_schedule(Rotation(info, mine, lambda src, p: seen.append((src, p.clone()))), info)
    gathered = torch.empty((n,) + SHAPE)
    with comm.comm_ledger() as ledger:
        run_schedule(Rotation(info, mine, lambda src, p: None, gathered=gathered), info)
    return ([s for s, _ in seen], all(torch.equal(p, torch.full(SHAPE, float(s))) for s, p in seen),
            torch.equal(mine, keep), torch.equal(gathered, torch.arange(n, dtype=torch.float32).view(n, 1, 1)
                                                 .expand((n,) + SHAPE)),
            ledger.received("p2p"), len(rot.scratch))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_rotation_visits_every_rank_in_order(n):
    for r, (srcs, values_ok, input_kept, gathered_ok, received, scratch) in enumerate(run_world(_rotation, n)):
        assert srcs == [(r - t) % n for t in range(n)]
        assert values_ok and input_kept and gathered_ok
        assert received == (n - 1) * 6 * 4
        assert scratch == min(2, n - 1)


class _Sum(Schedule):
    def __init__(self, info, steps, lag, mode, ship_dtype):
        self.info, self.steps, self.mode = info, steps, mode
        self.relay = Relay(info, steps, lag=lag, ship_dtype=ship_dtype)
        self.returns = self.relay.returns

    def compute(self, t, handle):
        part = _partial(self.info.rank, self.relay.owner(t), self.info.size)
        if self.mode == "add":
            self.relay.add(t, part, handle)
        else:
            self.relay.buffer(t, handle, lambda: torch.zeros(SHAPE, dtype=torch.float64)).add_(part)

    def finish(self):
        self.relay.finish()


def _relay(steps, lag, mode, ship_dtype):
    info = comm.group_info()
    with comm.comm_ledger() as ledger:
        res = run_schedule(_Sum(info, steps, lag, mode, ship_dtype), info).relay.result
    return res, ledger.received("p2p"), ledger.sent("p2p")


@pytest.mark.parametrize("n,steps,lag,mode,ship", [
    pytest.param(3, 3, 0, "add", None, id="own-first-N3"),
    pytest.param(4, 4, 0, "buffer", None, id="own-first-in-place-N4"),
    pytest.param(4, 2, 0, "add", None, id="own-first-window-2-of-4"),
    pytest.param(4, 3, 0, "buffer", None, id="own-first-window-3-of-4"),
    pytest.param(2, 2, 1, "add", torch.float32, id="own-last-ship-fp32-N2"),
    pytest.param(4, 4, 1, "add", torch.float32, id="own-last-ship-fp32-N4"),
])
def test_relay_sums_every_partial_on_its_owner(n, steps, lag, mode, ship):
    for o, (res, received, sent) in enumerate(run_world(_relay, n, steps, lag, mode, ship)):
        # owner o gets the partials of the ranks that computed for it: o + t + lag, t < steps
        expect = sum(_partial((o + t + lag) % n, o, n) for t in range(steps))
        assert res.dtype == torch.float64 and torch.equal(res, expect)
        hop = 6 * (8 if ship is None else ship.itemsize)
        assert received == sent == (steps - 1) * hop


def test_driver_posts_nothing_for_a_step_without_transfers(monkeypatch):
    calls = []
    monkeypatch.setattr(ring.driver, "exchange", lambda *a, **k: calls.append(a))

    class Local(Schedule):
        steps = 3

        def __init__(self):
            self.done = []

        def compute(self, t, handle):
            handle.wait()
            self.done.append(t)

        def finish(self):
            self.done.append("finish")

    assert run_schedule(Local(), comm.group_info()).done == [0, 1, 2, "finish"]
    assert calls == [] and Schedule().fetch(0) is NOTHING


def test_tags_named_once_and_distinct():
    assert len(set(tags.ALL)) == len(tags.ALL)
    assert tags.ROTATION != tags.RELAY and tags.RING_FORWARD != tags.RING_BACKWARD
    assert ring.tags.ALL is comm.tags.ALL
    # no other module of the package writes a tag as a number
    root = pathlib.Path(ok.__file__).parent
    pat = re.compile(r"TAG\w*\s*=\s*\(?\s*\d|P2POp\([^)]*,\s*\d+\s*\)")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "tags.py" and pat.search(p.read_text())]
    assert offenders == []


def _usp_cached():
    import torch.distributed as dist

    a, b = ok.usp_groups(2), ok.usp_groups(2)
    sub = dist.new_group(list(range(dist.get_world_size())))  # collective: every rank creates it
    c, d = ok.usp_groups(2, group=sub), ok.usp_groups(2, group=sub)
    one = ok.usp_groups(1)
    s = comm.all_reduce(torch.tensor([float(dist.get_rank())]), group=a.ulysses_group).item()
    return a is b, c is d, c is not a, one is not a, s


def test_usp_groups_in_a_world_of_one():
    """Without torch.distributed (a world of one) there is nothing to create: both groups are the default
    group of one, and USP runs as plain attention; a degree that does not divide one still raises."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    g = ok.usp_groups(1)
    assert (g.ulysses_group, g.ring_group, g.ulysses_degree, g.ring_degree) == (None, None, 1, 1)
    q, k, v = (torch.randn(1, 8, 2, 4, dtype=torch.float64) for _ in range(3))
    out = ok.usp_attention(q, k, v, ulysses_group=g.ulysses_group, ring_group=g.ring_group, causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    torch.testing.assert_close(out, ref.transpose(1, 2))
    with pytest.raises(ValueError, match="must divide the group size"):
        ok.usp_groups(2)


def test_usp_groups_are_cached_per_parent_and_degree():
    for r, (same, same_sub, other_parent, other_degree, s) in enumerate(run_world(_usp_cached, 4)):
        assert same and same_sub and other_parent and other_degree
        assert s == 2 * (r // 2) + 2 * (r // 2) + 1  # ranks {2i, 2i+1} form a Ulysses group
