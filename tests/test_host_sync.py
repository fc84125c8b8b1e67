"""No host synchronisation in the ops' own code (#18 item 2), proven on CPU on 2 and 3 gloo ranks.

On a GPU, ``.item()``, ``bool(tensor)``, ``.tolist()``, ``.cpu()``, ``nonzero`` and friends stall the
host until the GPU has caught up. The ops' host code (ops/, comm/, the kernel launchers) is the same on
CPU and CUDA, so a :class:`torch.overrides.TorchFunctionMode` that records every such call whose
caller is a file of the package shows, on CPU, what would synchronise on a GPU: each op's forward and
backward (called twice: the first call builds the cached plans) must make none, under the default
``"full"`` validation, with the Triton backend (under ``TRITON_INTERPRET=1``: the launchers, grids
and span plans of the GPU path) and with the torch backend.

Exempt by design (each entry says why): the CPU control plane (comm/validate.py: the cross-rank check
runs on CPU tensors of a gloo group, never on the GPU), :mod:`odysseus_kernels._host` (reads
``cu_seqlens`` / ``g_gamma`` once per tensor version: asserted separately below to read on the first
call only), and branches that only CPU tensors reach. The torch kernel backends are not exempt: they
read nothing either. The CUDA-marked tests in test_cuda_hotpath.py check the same on
a real GPU with ``torch.cuda.set_sync_debug_mode("error")`` (world 1).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import odysseus_kernels as ok
from tests.distributed import run_world
from tests.triton_device import INTERPRETING

_SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
            "argwhere", "masked_select", "unique", "unique_consecutive", "equal", "allclose"}
_PKG = os.path.dirname(os.path.abspath(ok.__file__)) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
# (package file, function or "*") -> why it may read tensors on the host
EXEMPT = {
    ("comm/validate.py", "*"): "the cross-rank check: CPU tensors on the gloo control group, by design",
    ("_host.py", "*"): "host copies of cu_seqlens / g_gamma, read once per tensor version (tested below)",
    ("ops/lasp2.py", "_decay_values"): "value range check of a CPU decay tensor (a CUDA one is not read)",
    ("ops/tp_gemm/fused.py", "all_gather_gemm"): "host-flag path of the fused GEMM, CPU tensors only",
}


def _exempt(rel: str, func: str) -> bool:
    return (rel, "*") in EXEMPT or (rel, func) in EXEMPT


class SyncSpy(TorchFunctionMode):
    """Records ``file:line function call`` for every host-reading call made from a package file."""

    def __init__(self):
        super().__init__()
        self.hits: list[str] = []
        self.callers: set[str] = set()
        self.host_reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _SYNCING or (name == "to" and _to_cpu(args, kwargs)):
            f = sys._getframe(1)
            while f is not None and f.f_code.co_filename.startswith(_TORCH):
                f = f.f_back
            if f is not None and f.f_code.co_filename.startswith(_PKG):
                rel = f.f_code.co_filename[len(_PKG):].replace(os.sep, "/")
                if rel == "_host.py":
                    self.host_reads += 1
                if not _exempt(rel, f.f_code.co_name):
                    self.hits.append(f"{rel}:{f.f_lineno} {f.f_code.co_name}: {name}")
        else:
            f = sys._getframe(1)
            if f.f_code.co_filename.startswith(_PKG):
                self.callers.add(f.f_code.co_name)
        return func(*args, **(kwargs or {}))


def _to_cpu(args, kwargs) -> bool:
    """``.to("cpu")``: a device given as the string "cpu". (A ``torch.device`` object comes from a tensor's
    own device in the ops' code - a no-op for a tensor already there - so it is not flagged: on CPU every
    tensor is on the CPU and the two cannot be told apart.)"""
    dev = (kwargs or {}).get("device")
    return any(isinstance(a, str) and a.split(":")[0] == "cpu" for a in list(args[1:]) + [dev])


def _qkv(seed, b, c, h, hkv, d):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, x, d, generator=g).requires_grad_(True) for x in (h, hkv, hkv)]


def _attention_cases(n):
    cu = [0, 4 * n, 12 * n, 16 * n]  # three documents of a 16n-token stream, each divisible by 2n
    base = dict(causal=True, layout="zigzag")
    cases = {
        "ring-zigzag": (ok.ring_attention, base),
        "ring-window": (ok.ring_attention, dict(causal=True, layout="contiguous", window_size=(5, 0))),
        "ring-docs-list": (ok.ring_attention, dict(causal=True, layout="doc_zigzag", cu_seqlens=cu)),
        "token_ring-zigzag": (ok.token_ring_attention, base),
        "token_ring-full": (ok.token_ring_attention, dict(causal=False, layout="contiguous")),
        "allgather_kv-zigzag": (ok.allgather_kv_attention, base),
        "ulysses-zigzag": (ok.ulysses_attention, base),
    }
    if n % 2 == 0:
        g = ok.usp_groups(2)
        cases["usp-zigzag"] = (lambda q, k, v, **kw: ok.usp_attention(q, k, v, ulysses_group=g.ulysses_group,
                                                                       ring_group=g.ring_group, **kw), base)
    return cases


def _run(spy, fn):
    """Forward and backward under the spy. ``Tensor.backward`` would run the whole backward inside the
    mode's own handler (where the mode is off), so the engine is called directly."""
    with spy:
        loss = fn().float().sum()
        torch.autograd.graph._engine_run_backward((loss,), (torch.ones_like(loss),), False, False, (),
                                                  allow_unreachable=True, accumulate_grad=True)


def _check_attention(backend):
    n = ok.group_info().size
    h, hkv = 2 * n, n  # ulysses needs heads divisible by n; GQA 2:1
    report = {}
    for name, (op, kw) in _attention_cases(n).items():
        q, k, v = _qkv(1, 1, 16, h, hkv, 16)
        for call in range(2):
            spy = SyncSpy()
            _run(spy, lambda: op(q, k, v, backend=backend, **kw))
            report[f"{name}#{call}"] = (spy.hits, sorted(spy.callers))
    return report


def _check_other():
    n = ok.group_info().size
    report = {}
    q, k, v = _qkv(2, 1, 16, 2 * n, n, 16)
    for call in range(2):
        spy = SyncSpy()
        _run(spy, lambda: ok.ring_self_attention(q, k, v, causal=True, layout="zigzag"))
        report[f"rsa#{call}"] = (spy.hits, sorted(spy.callers))
    gamma = torch.full((2,), -0.1, requires_grad=True)
    gdec = torch.nn.functional.logsigmoid(torch.randn(1, 16, 2)).requires_grad_(True)
    ql, kl, vl = _qkv(3, 1, 16, 2, 2, 8)
    for backend in ("triton", "torch"):
        for call in range(2):
            spy = SyncSpy()
            _run(spy, lambda: ok.lasp2_linear_attention(ql, kl, vl, g=gdec, g_gamma=gamma, backend=backend))
            report[f"lasp2-{backend}#{call}"] = (spy.hits, sorted(spy.callers))
            report[f"lasp2-{backend}#{call}-host-reads"] = spy.host_reads
    x = torch.randn(2, 6, 8, requires_grad=True)
    w_ag = torch.randn(5, 8, requires_grad=True)
    w_rs = torch.randn(7, 8, requires_grad=True)
    for impl in ("ring", "chunked", "plain"):
        for call in range(2):
            spy = SyncSpy()
            _run(spy, lambda: ok.all_gather_linear(x, w_ag, impl=impl))
            report[f"all_gather_linear-{impl}#{call}"] = (spy.hits, sorted(spy.callers))
            spy = SyncSpy()
            _run(spy, lambda: ok.linear_reduce_scatter(x.repeat(1, n, 1), w_rs, impl=impl))
            report[f"linear_reduce_scatter-{impl}#{call}"] = (spy.hits, sorted(spy.callers))
    return report


def _check_cu_seqlens_tensor():
    """A ``cu_seqlens`` tensor is read on the host on its first use only (per tensor version)."""
    n = ok.group_info().size
    cu = torch.tensor([0, 4 * n, 12 * n, 16 * n], dtype=torch.int32)
    q, k, v = _qkv(4, 1, 16, 2, 2, 8)
    reads = []
    for _ in range(2):
        spy = SyncSpy()
        _run(spy, lambda: ok.ring_attention(q, k, v, causal=True, layout="doc_zigzag", cu_seqlens=cu))
        assert not spy.hits, spy.hits
        reads.append(spy.host_reads)
    cu2 = cu.clone()
    cu2[1] = 8 * n  # a new tensor (and an in-place write): read again
    spy = SyncSpy()
    _run(spy, lambda: ok.ring_attention(q, k, v, causal=True, layout="doc_zigzag", cu_seqlens=cu2))
    reads.append(spy.host_reads)
    cu2[1] = 4 * n  # in place: the version counter moves, the next call reads again
    spy = SyncSpy()
    _run(spy, lambda: ok.ring_attention(q, k, v, causal=True, layout="doc_zigzag", cu_seqlens=cu2))
    reads.append(spy.host_reads)
    return reads


@pytest.mark.parametrize("n, backend", [(3, "triton"), (2, "triton"), (3, "torch")])
def test_attention_ops_make_no_host_reads(n, backend):
    if backend == "triton" and not INTERPRETING:
        pytest.skip("the Triton backend runs on CPU only under TRITON_INTERPRET=1")
    per_rank = run_world(_check_attention, n, backend, timeout=900)
    bad = {case: hits for rep in per_rank for case, (hits, _) in rep.items() if hits}
    assert not bad, f"host-synchronising calls in the ops' code: {bad}"
    # the spy sees the backward too (the autograd Functions' backward methods call torch from the package)
    assert any("backward" in callers for rep in per_rank for _, (_, callers) in rep.items())


@pytest.mark.parametrize("n", [3])
def test_rsa_lasp2_and_tp_gemms_make_no_host_reads(n):
    if not INTERPRETING:
        pytest.skip("LASP-2's Triton backend runs on CPU only under TRITON_INTERPRET=1")
    per_rank = run_world(_check_other, n, timeout=900)
    bad = {case: v[0] for rep in per_rank for case, v in rep.items() if isinstance(v, tuple) and v[0]}
    assert not bad, f"host-synchronising calls in the ops' code: {bad}"
    for rep in per_rank:  # g_gamma read on the first call only (cached per tensor version)
        assert rep["lasp2-triton#0-host-reads"] >= 1, rep
        for backend in ("triton", "torch"):
            assert rep[f"lasp2-{backend}#1-host-reads"] == 0, rep


def _check_layers():
    """A training step of the Llama-style model under every strategy's layers (the SP attention cores,
    TP-SP's and Odysseus' TP/ZeRO linears, LASP-2H's hybrid stack; default ``"auto"`` backend): forward,
    loss, backward and the replicated weights' gradient sync, each twice."""
    from odysseus_kernels.models import token_loss_sum
    from odysseus_kernels.playground.runner import STRATEGIES, RunConfig, prepare

    n = ok.group_info().size
    rc = RunConfig(seq_len=8 * n, hidden=24, heads=4, kv_heads=2, intermediate=48, vocab=64, layers=2,
                   steps=1, warmup=0)
    report = {}
    for strategy in STRATEGIES:
        model, plan, ids, labels, pos = prepare(strategy, rc)
        for call in range(2):
            model.zero_grad(set_to_none=True)
            spy = SyncSpy()
            _run(spy, lambda: token_loss_sum(model(ids, pos), labels))
            with spy:
                plan.finish_backward()
            report[f"{strategy}#{call}"] = (spy.hits, sorted(spy.callers))
    return report


@pytest.mark.parametrize("n", [2])
def test_strategy_layers_make_no_host_reads(n):
    """The layers that combine the ops (and the model around them) add no host read: every strategy's
    training step, as the playground runs it."""
    from odysseus_kernels.playground.runner import STRATEGIES

    per_rank = run_world(_check_layers, n, timeout=600)
    for rep in per_rank:
        assert sorted(rep) == sorted(f"{s}#{c}" for s in STRATEGIES for c in range(2)), sorted(rep)
    bad = {case: hits for rep in per_rank for case, (hits, _) in rep.items() if hits}
    assert not bad, f"host-synchronising calls in the layers' or the model's code: {bad}"
    # the spy saw the layers' own code: the strategies' modules and the replicated gradients' all-reduce
    callers = {c for rep in per_rank for _, (_, cs) in rep.items() for c in cs}
    assert {"sync_replicated_grads", "forward"} <= callers, sorted(callers)


@pytest.mark.parametrize("n", [2])
def test_cu_seqlens_tensor_is_read_once_per_version(n):
    for reads in run_world(_check_cu_seqlens_tensor, n, timeout=300):
        assert reads[0] >= 1 and reads[1] == 0 and reads[2] >= 1 and reads[3] >= 1, reads


def test_spy_catches_host_reads_in_package_code():
    """The spy is not blind: a package function that reads a tensor on the host is reported."""
    from odysseus_kernels.ops import layout

    spy = SyncSpy()
    with spy:
        layout.normalize_cu_seqlens(torch.tensor([0, 4, 8]), 8, "test")  # via _host: exempt, counted
        layout.normalize_cu_seqlens([0, 4, 8], 8, "test")
    assert spy.host_reads == 1 and not spy.hits
    spy = SyncSpy()
    with spy:
        from odysseus_kernels.ops.attention import common
        common.is_empty(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))  # no host reads
    assert not spy.hits
    spy = SyncSpy()
    with spy:
        exec(compile("import torch\nbool(torch.ones(1))", os.path.join(_PKG, "ops", "_probe.py"), "exec"), {})
    assert spy.hits and spy.hits[0].startswith("ops/_probe.py:2"), spy.hits


@pytest.mark.parametrize("which", ["span positions", "Ulysses row order"])
def test_device_tables_a_graph_capture_used_outlive_the_bounded_cache(monkeypatch, which):
    """Device tables built once and cached (span positions of the fused attention kernels, the Ulysses
    permutation to token order) live in bounded caches; a CUDA graph replay reads them long after its
    capture, so the ones looked up while a capture is running are kept for good: the cache may drop them
    (eager calls with many other packings), their tensors stay alive. Tables looked up outside a capture
    are not kept (the cache's bound holds)."""
    import gc
    import weakref

    from odysseus_kernels.kernels import device_cache
    from odysseus_kernels.kernels.attention.triton_attention import cached_positions
    from odysseus_kernels.ops.attention.ulysses import _natural_order

    cache = cached_positions if which == "span positions" else _natural_order
    monkeypatch.setattr(cache, "captured", {})
    refs = {}
    for capturing, spans in ((True, ((0, 5), (9, 3))), (False, ((0, 4),))):
        monkeypatch.setattr(device_cache, "capturing", lambda device, c=capturing: c)
        if cache is cached_positions:
            key, want = (spans, (0, 6, 12), "cpu"), [a + i for a, n in spans for i in range(n)]
            table = lambda v: v.pos  # noqa: E731
        else:  # two ranks' spans, rank-major
            key, want = (((spans[0],), spans[1:] or ((7, 2),)), "cpu"), None
            table = lambda v: v[0]  # noqa: E731
        value = cache(*key)
        assert value is cache(*key)  # cached
        if want is not None:
            assert table(value).tolist() == want
        refs[capturing] = weakref.ref(table(value))
        del value
    cache.cache_clear()  # as an eviction would
    gc.collect()
    assert refs[True]() is not None, "a table a captured graph reads was freed"
    assert refs[False]() is None, "a table used outside any capture was kept past the cache"
    assert not device_cache.capturing("cpu")  # the real check never calls into CUDA for a host device


def test_ulysses_row_order_is_the_token_order():
    from odysseus_kernels.ops.attention.ulysses import _natural_order

    spans = (((0, 2), (6, 2)), ((2, 2), (4, 2)))  # zigzag on 2 ranks, 8 tokens, rank-major
    to_nat, back = _natural_order(spans, "cpu")
    assert back.tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert back[to_nat].tolist() == list(range(8))


def test_fused_gemm_flags_keep_their_old_buffers_when_they_grow():
    """The fused TP GEMMs' flag vectors grow (more pieces than they hold) without a host sync: the old
    buffers stay allocated, since launches in flight, or a CUDA graph captured before the growth, still
    use them; the row maps are device tables kept for a capture like the span positions."""
    import weakref

    from odysseus_kernels.kernels.device_cache import DeviceCache
    from odysseus_kernels.ops.tp_gemm import fused

    flags = fused._Flags(torch.device("cpu"))
    old = weakref.ref(flags.ag)
    e1 = flags.next_epoch(8)
    e2 = flags.next_epoch(200)  # grows: 64 -> 200
    assert flags.cap == 200 and flags.ag.numel() == 200 and e2 == e1 + 1
    assert old() is not None and any(a is old() for a, _, _ in flags.retired)
    assert isinstance(fused._ag_rows, DeviceCache) and isinstance(fused._rs_rows, DeviceCache)
