"""Host work of one ring call, counted on CPU: the Triton launches (under TRITON_INTERPRET=1) and the
other device ops (every aten op except views and pure allocations, outside communication) of one
``ring_attention`` forward and backward on 4 gloo ranks, per ring step; the same with 8 and 64 packed
documents in ``doc_zigzag`` (the count must not grow with the documents); the launch configs picked
once per call, not per step (the kernels are prepared once, ``ShardKernels``); the outputs and gradients
against float64 attention; no wrapper calls Triton's ``ConstexprFunction`` cdiv/next_power_of_2 on the
host; and the block-planning time at 32 ranks / 64 documents once cached."""
import time
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.kernels.attention import attention_ref
from tests.distributed import run_world
from tests.triton_device import needs_interpreter

_ALLOC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class _Count(TorchDispatchMode):
    """Counts aten ops (not views, not pure allocations, not inside communication) and Triton launches."""

    def __init__(self):
        super().__init__()
        self.ops, self.launches, self.names, self._inside = 0, 0, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._inside or func.is_view or func.namespace != "aten" or func._schema.name.split("::")[-1] in _ALLOC \
                or func.__name__.split(".")[0] in ("detach", "alias", "lift_fresh", "_local_scalar_dense"):
            return out
        inner = [f.filename for f in traceback.extract_stack(limit=30)
                 if "odysseus_kernels/" in f.filename or f.filename.endswith("nanfill.py")]
        if inner and ("odysseus_kernels/comm/" in inner[-1] or inner[-1].endswith("nanfill.py")):
            return out  # communication (exchange, rank checks), or the harness NaN-filling torch.empty
        self.ops += 1
        self.names.append(func.__name__)
        return out


def _patch_launches(counter):
    from triton.runtime.interpreter import InterpretedFunction

    orig = InterpretedFunction.run

    def run(self, *a, **kw):
        counter.launches += 1
        counter._inside += 1
        try:
            return orig(self, *a, **kw)
        finally:
            counter._inside -= 1

    InterpretedFunction.run = run
    return lambda: setattr(InterpretedFunction, "run", orig)


def _count_ring(layout, docs, c_local):
    n = comm.group_info().size
    L = c_local * n
    cu = None if docs is None else [i * (L // docs) for i in range(docs + 1)]
    g = torch.Generator().manual_seed(5)
    q, k, v, do = (torch.randn(1, L, h, 16, generator=g, dtype=torch.float64) for h in (2, 1, 1, 2))
    sh = lambda t: ok.shard_sequence(t, layout=layout, cu_seqlens=cu)  # noqa: E731
    kw = dict(causal=True, layout=layout, cu_seqlens=cu, backend="triton")
    res = {}
    from odysseus_kernels.kernels.attention import triton_attention as ta

    real_pick, picks = ta.pick, []

    def counting_pick(*a, **kw):  # launch configs are chosen when a call prepares its kernels, not per step
        picks.append(a[1])
        return real_pick(*a, **kw)

    ta.pick = counting_pick
    try:
        for rep in range(2):  # the first call plans and compiles; the second is counted
            leaves = [sh(t).float().requires_grad_(True) for t in (q, k, v)]
            dout = sh(do).float()
            fwd, bwd = _Count(), _Count()
            picks.clear()
            undo = _patch_launches(fwd)
            try:
                with fwd:
                    out = ok.ring_attention(*leaves, **kw)
            finally:
                undo()
            fwd_picks = list(picks)
            picks.clear()
            undo = _patch_launches(bwd)
            try:
                with bwd:
                    out.backward(dout)
            finally:
                undo()
            bwd_picks = list(picks)
    finally:
        ta.pick = real_pick
    res.update(fwd_picks=fwd_picks, bwd_picks=bwd_picks)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = attention_ref(*ref_leaves, causal=True, cu_seqlens=cu)
    ref.backward(do)
    err = max((a.double() - sh(b)).abs().max().item()
              for a, b in zip([out] + [t.grad for t in leaves], [ref.detach()] + [t.grad for t in ref_leaves]))
    res.update(fwd_launches=fwd.launches, fwd_ops=fwd.ops, bwd_launches=bwd.launches, bwd_ops=bwd.ops, err=err,
               fwd_names=fwd.names, bwd_names=bwd.names)
    return res


@needs_interpreter
@pytest.mark.parametrize("layout, docs, c_local", [
    pytest.param("zigzag", None, 64, id="zigzag"),
    pytest.param("doc_zigzag", 8, 64, id="doc_zigzag-8docs"),
    pytest.param("doc_zigzag", 64, 128, id="doc_zigzag-64docs"),
])
def test_ring_call_launches_per_step(layout, docs, c_local):
    n = 4
    for r, res in enumerate(run_world(_count_ring, n, layout, docs, c_local, timeout=900)):
        steps = n  # causal zigzag layouts: every step has visible work
        fwd = res["fwd_launches"] + res["fwd_ops"]
        bwd = res["bwd_launches"] + res["bwd_ops"]
        print(f"rank {r} {layout} docs={docs}: forward {res['fwd_launches']} launches + {res['fwd_ops']} ops "
              f"{res['fwd_names']}; backward {res['bwd_launches']} launches + {res['bwd_ops']} ops {res['bwd_names']}")
        assert fwd <= 2 * steps, res
        assert bwd <= 4 * steps, res
        assert res["fwd_launches"] <= steps and res["bwd_launches"] <= 2 * steps + 1, res
        # host work per step: each kernel's launch config is picked once per call (ShardKernels), not per step
        assert sorted(res["fwd_picks"]) == ["fwd"], res["fwd_picks"]
        assert sorted(res["bwd_picks"]) == ["bwd_dkdv", "bwd_dq", "bwd_preprocess"], res["bwd_picks"]
        assert res["err"] < 1e-4, res


def test_block_planning_at_32_ranks_64_documents_is_cached():
    from odysseus_kernels.ops.attention.blocks import plan_blocks, ring_steps
    from odysseus_kernels.ops.attention.common import resolve_layout

    n, docs, c = 32, 64, 128
    L = n * c
    cu = [i * (L // docs) for i in range(docs + 1)]

    def plan():
        spans, mask = resolve_layout("ring_attention", "doc_zigzag", n, c, True, (-1, -1), cu)
        steps = ring_steps(spans, mask)
        for r in (0, n - 1):
            for t in range(steps):
                plan_blocks(spans[r], spans[(r - t) % n], mask)
        return steps

    assert plan() == n
    t0 = time.perf_counter()
    for _ in range(5):
        plan()
    per_call = (time.perf_counter() - t0) / 5
    print(f"planning after the first call: {per_call * 1e3:.3f} ms")
    assert per_call < 5e-3


def _fused_windows_and_gqa():
    """The fused per-step path (Triton, span positions, runtime windows) against float64 attention:
    sliding windows in contiguous and zigzag layouts, causal and not, GQA, an odd head dim."""
    n = comm.group_info().size
    L = 24 * n
    g = torch.Generator().manual_seed(9)
    q, k, v, do = (torch.randn(1, L, h, 12, generator=g, dtype=torch.float64) for h in (4, 2, 2, 4))
    errs = {}
    for layout, causal, window in (("contiguous", True, (5, 0)), ("zigzag", True, (30, -1)),
                                   ("zigzag", False, (7, 3)), ("contiguous", False, (-1, 9))):
        ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        ref = attention_ref(*ref_leaves, causal=causal, window=window)
        ref.backward(do)
        sh = lambda t: ok.shard_sequence(t, layout=layout)  # noqa: E731
        leaves = [sh(t).float().requires_grad_(True) for t in (q, k, v)]
        out = ok.ring_attention(*leaves, causal=causal, layout=layout, window_size=window, backend="triton")
        out.backward(sh(do).float())
        errs[(layout, causal, window)] = max(
            (a.double() - sh(b)).abs().max().item()
            for a, b in zip([out] + [t.grad for t in leaves], [ref.detach()] + [t.grad for t in ref_leaves]))
    return errs


@needs_interpreter
def test_fused_ring_steps_with_windows_match_float64():
    for errs in run_world(_fused_windows_and_gqa, 2, timeout=900):
        assert errs and all(e < 1e-4 for e in errs.values()), errs


def test_kernel_wrappers_do_host_arithmetic_without_triton_constexpr_functions():
    """``triton.cdiv`` / ``triton.next_power_of_2`` are ``ConstexprFunction`` objects (~6 us per host
    call, several per launch): the wrappers use ``kernels.backend.cdiv`` / ``next_pow2``, which agree
    with them (``tl.cdiv`` inside kernels is unaffected)."""
    import pathlib
    import re

    import triton

    from odysseus_kernels.kernels.backend import cdiv, next_pow2

    root = pathlib.Path(ok.__file__).parent
    pat = re.compile(r"\btriton\.(cdiv|next_power_of_2)\(")
    hits = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not hits, hits
    for a in range(0, 600):
        assert next_pow2(a) == triton.next_power_of_2(a), a
        for b in (1, 3, 16, 64, 128):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)



def test_planned_blocks_over_whole_shards_take_the_tensors_without_slicing(monkeypatch):
    """A block covering all query rows / all key rows hands the block kernel those tensors themselves, not
    views of them (taking ``t[:, 0:n]`` costs about a microsecond of host time per tensor and ring step,
    nine tensors per backward block); a partial block slices; both give the float64 reference's values."""
    from odysseus_kernels.kernels.attention import attention_ref
    from odysseus_kernels.ops.attention import common
    from odysseus_kernels.ops.attention.blocks import Block, Mask

    g = torch.Generator().manual_seed(3)
    b, c, h, d = 2, 12, 2, 8
    q, k, v, do = (torch.randn(b, c, h, d, generator=g, dtype=torch.float64) for _ in range(4))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = attention_ref(*leaves, causal=True)
    ref.backward(do)
    seen = []
    fwd, bwd = common.attention_block_fwd, common.attention_block_bwd

    def rec_fwd(q_, k_, v_, **kw):
        seen.append(("fwd", q_, k_, v_, kw.get("out"), kw.get("lse")))
        return fwd(q_, k_, v_, **kw)

    def rec_bwd(do_, q_, k_, v_, out_, lse_, **kw):
        seen.append(("bwd", do_, q_, k_, v_, out_, lse_, kw["dq"], kw["dk"], kw["dv"]))
        return bwd(do_, q_, k_, v_, out_, lse_, **kw)

    monkeypatch.setattr(common, "attention_block_fwd", rec_fwd)
    monkeypatch.setattr(common, "attention_block_bwd", rec_bwd)
    mask, scale = Mask(causal=True), d ** -0.5
    whole = (Block(0, c, 0, c, True, 0, 0),)
    halves = (Block(0, c, 0, c // 2, True, 0, 0), Block(0, c, c // 2, c, True, 0, c // 2))  # keys in two blocks
    for blocks in (whole, halves):
        seen.clear()
        out, lse = common.blocks_attention(q, k, v, blocks[:1], scale=scale, backend="torch", mask=mask)
        common.blocks_forward(q, k, v, blocks[1:], out, lse, scale=scale, backend="torch", mask=mask)
        dq, dk, dv = (torch.zeros_like(t) for t in (q, k, v))
        common.blocks_backward(do, q, k, v, out, lse, None, blocks, dq, dk, dv, scale=scale, backend="torch",
                               mask=mask)
        calls = {kind: [x for x in seen if x[0] == kind] for kind in ("fwd", "bwd")}
        assert len(calls["fwd"]) == len(blocks) and len(calls["bwd"]) == len(blocks)
        for _, *args in calls["bwd"]:  # every query-side tensor is whole here (all blocks cover all rows)
            assert all(a is w for a, w in zip(args[:2] + args[4:6], (do, q, out, lse))), "query side sliced"
            assert args[6] is dq
            key_side_whole = all(a is w for a, w in zip(args[2:4] + args[7:], (k, v, dk, dv)))
            assert key_side_whole == (blocks is whole)
        for _, q_, k_, v_, *_ in calls["fwd"]:
            assert q_ is q and (k_ is k and v_ is v) == (blocks is whole)
        for got, want in zip((out, dq, dk, dv), (ref.detach(), *(t.grad for t in leaves))):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
