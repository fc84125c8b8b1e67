"""The GPU hot path (#18): no host synchronisation inside an op's forward or backward, and ops that a
``torch.cuda.CUDAGraph`` can capture and replay. ``cuda``-marked: runs on one GPU at world size 1
(gloo cannot move CUDA tensors point to point, so multi-rank capture needs NCCL and several GPUs).

Each op (and ring, TokenRing, all-gather-KV and local attention over packed documents given as a host
list) is called once first (Triton compiles, block plans are cached, the extension loads), then
``torch.cuda.set_sync_debug_mode("error")`` turns any synchronising call (``.item()``, ``.cpu()``,
``nonzero``, a blocking copy) into an error during a forward and a backward.

The no-sync test runs under both validation modes: under ``"full"`` a CUDA ``g_gamma`` is read to the
host once per tensor version (the warm-up call), so later calls do not synchronise; the cross-rank
check itself runs on a CPU group and never syncs the GPU. Capture runs under ``"local"`` (the check's
gloo collective is host work a graph cannot hold). Several GPUs (NCCL): tests/test_cuda_multirank.py.
"""
from __future__ import annotations

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels.playground.runner import STRATEGIES

pytestmark = pytest.mark.cuda

B, L, H, HKV, D = 2, 256, 8, 2, 64


def _qkv(dtype=torch.bfloat16, hkv=HKV, grad=True):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, L, H, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, L, hkv, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, L, hkv, D, device="cuda", dtype=dtype, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _attention(name, **kw):
    op = getattr(ok, name)
    return lambda q, k, v: op(q, k, v, causal=True, **kw)


DOCS = [0, 37, 160, L]  # packed documents, given as a host list (the document ids are built once and cached)


_GAMMA = {}


def _lasp2(q, k, v):
    # one g_gamma tensor for every call: under "full" validation it is read on the host once per tensor version
    gamma = _GAMMA.setdefault("g", torch.full((H,), -0.05, device="cuda"))
    return ok.lasp2_linear_attention(q, k, v, g_gamma=gamma)


OPS = {
    "ring_attention": (_attention("ring_attention"), HKV),
    # the zigzag layout: two spans per shard even at world 1, so the kernels take span positions as data
    "ring_attention+zigzag": (_attention("ring_attention", layout="zigzag"), HKV),
    "token_ring_attention": (_attention("token_ring_attention"), HKV),
    "ulysses_attention": (_attention("ulysses_attention"), HKV),
    # rows arrive rank-major: attended in token order through a cached permutation
    "ulysses_attention+zigzag": (_attention("ulysses_attention", layout="zigzag"), HKV),
    "allgather_kv_attention": (_attention("allgather_kv_attention"), HKV),
    "local_attention": (_attention("local_attention"), HKV),
    "ring_self_attention": (_attention("ring_self_attention"), HKV),  # RSA, the 2021 baseline (torch ops)
    # USP at world 1: both groups the default group of one
    "usp_attention": (_attention("usp_attention", ulysses_group=None, ring_group=None), HKV),
    "lasp2_linear_attention": (_lasp2, H),
    **{f"{name}+docs": (_attention(name, cu_seqlens=DOCS), HKV)
       for name in ("ring_attention", "token_ring_attention", "allgather_kv_attention", "local_attention")},
}


@pytest.mark.parametrize("mode", ["full", "local"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_attention_ops_do_not_sync_the_host(name, mode):
    fn, hkv = OPS[name]
    q, k, v = _qkv(hkv=hkv)
    fn(q, k, v).float().sum().backward()  # warm-up: compile, plan, load
    torch.cuda.synchronize()
    q, k, v = _qkv(hkv=hkv)
    dout = torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with ok.validation(mode):
            out = fn(q, k, v)
            out.backward(dout)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(out.float()).all() and all(torch.isfinite(t.grad.float()).all() for t in (q, k, v))


@pytest.mark.parametrize("name", ["ring_attention", "token_ring_attention", "local_attention+docs",
                                  "lasp2_linear_attention"])
def test_direct_launches_run_what_the_jit_runs(name):
    """The default direct launches (``kernels.launch``): a warm call launches nothing through Triton's JIT,
    and its output and gradients equal, bit for bit, those of a call with every launch through the JIT
    (``set_triton_launch("jit")``): the same compiled kernels with the same arguments."""
    from odysseus_kernels.kernels import launch

    fn, hkv = OPS[name]
    dout = torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16)

    def call():
        q, k, v = _qkv(hkv=hkv)
        out = fn(q, k, v)
        out.backward(dout)
        torch.cuda.synchronize()
        return [out, q.grad, k.grad, v.grad]

    call()  # warm-up: compile, and the first launch of each fingerprint through the JIT
    n = launch.jit_launches()
    direct = call()
    assert launch.jit_launches() == n, f"{name}: a warm call launched {launch.jit_launches() - n} kernels through the JIT"
    with launch.triton_launch("jit"):
        jit = call()
    assert launch.jit_launches() > n
    for a, b in zip(direct, jit):
        assert torch.equal(a, b), f"{name}: direct and JIT launches differ by {(a.float() - b.float()).abs().max().item()}"


@pytest.mark.parametrize("impl", ["auto", "fused"])  # at world 1 "auto" is the plain GEMM; "fused" runs the
@pytest.mark.parametrize("name", ["all_gather_linear", "linear_reduce_scatter"])  # fused kernels and their flags
def test_tp_gemms_do_not_sync_the_host(name, impl):
    x = torch.randn(B, L, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(384, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    op = getattr(ok, name)
    op(x, w, impl=impl).float().sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with ok.validation("local"):
            y = op(x, w, impl=impl)
            y.backward(torch.ones_like(y))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    ref = x.detach().float() @ w.detach().float().T
    assert (y.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def capture_forward(fn, static, fresh_inputs, after_capture=None) -> list[float]:
    """Capture ``fn(*static)`` (no grad, validation "local", after two warm-up calls on a side stream)
    in a CUDA graph; for each list in ``fresh_inputs`` copy it into ``static``, replay, and return the
    max abs difference of the replayed output from an eager call on the same inputs. ``after_capture()``
    runs between the capture and the first replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):  # warm-up on a side stream, as CUDA graphs require
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with ok.validation("local"), torch.no_grad(), torch.cuda.graph(graph):
        out = fn(*static)
    if after_capture is not None:
        after_capture()
    diffs = []
    for fresh in fresh_inputs:
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        with torch.no_grad():
            eager = fn(*fresh)
        torch.cuda.synchronize()
        diffs.append((out.float() - eager.float()).abs().max().item())
    return diffs


def _fresh(static, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(t.shape, device="cuda", dtype=t.dtype, generator=gen) for t in static]


@pytest.mark.parametrize("name", sorted(OPS))
def test_attention_ops_capture_in_a_cuda_graph(name):
    fn, hkv = OPS[name]
    static = _qkv(hkv=hkv, grad=False)
    assert capture_forward(fn, static, [_fresh(static, 1), _fresh(static, 2)]) == [0.0, 0.0], name


@pytest.mark.parametrize("name", sorted(OPS))
def test_attention_forward_and_backward_capture_in_a_cuda_graph(name):
    """Whole-step capture (forward + backward in one graph, as in PyTorch's whole-network capture):
    replay on fresh inputs gives eager's output and, up to the order of floating-point accumulation,
    eager's gradients."""
    fn, hkv = OPS[name]
    static = _qkv(hkv=hkv)
    dout = torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up on a side stream
            for t in static:
                t.grad = None
            fn(*static).backward(dout)
    torch.cuda.current_stream().wait_stream(side)
    for t in static:
        t.grad = None  # the captured backward allocates the gradients from the graph's pool
    graph = torch.cuda.CUDAGraph()
    with ok.validation("local"), torch.cuda.graph(graph):
        out = fn(*static)
        out.backward(dout)
    grads = [t.grad for t in static]
    for seed in (1, 2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        fresh = [torch.randn(t.shape, device="cuda", dtype=t.dtype, generator=gen) for t in static]
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        ref = [f.clone().requires_grad_(True) for f in fresh]
        eager = fn(*ref)
        eager.backward(dout)
        torch.cuda.synchronize()
        assert torch.equal(out, eager), f"{name}: replayed output differs by {(out.float() - eager.float()).abs().max().item()}"
        for g, r in zip(grads, ref):
            scale = r.grad.float().abs().max().item()
            assert (g.float() - r.grad.float()).abs().max().item() <= 1e-2 * scale, f"{name}: replayed gradient differs"


@pytest.mark.parametrize("impl", ["auto", "chunked", "fused"])  # "fused" at world 1: its flags' epoch is host-counted,
@pytest.mark.parametrize("name", ["all_gather_linear", "linear_reduce_scatter"])  # but one rank waits on no piece
def test_tp_gemms_capture_in_a_cuda_graph(name, impl):
    op = getattr(ok, name)
    x = torch.randn(B, L, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(384, 256, device="cuda", dtype=torch.bfloat16)
    fn = lambda x: op(x, w, impl=impl)  # noqa: E731
    assert capture_forward(fn, [x], [_fresh([x], 1), _fresh([x], 2)]) == [0.0, 0.0], (name, impl)


@pytest.mark.parametrize("name", ["ring_attention+docs", "ulysses_attention+doc_zigzag"])
def test_a_captured_graph_keeps_its_device_tables_past_their_caches(name):
    """The device tables a capture used (span positions, ``cached_positions``; the Ulysses row order)
    outlive their bounded caches: dropped from them after the capture, their memory handed out again and
    overwritten, the replay still equals an eager call."""
    import gc

    from odysseus_kernels.kernels.attention.triton_attention import cached_positions
    from odysseus_kernels.ops.attention.ulysses import _natural_order

    docs = [0, 12, 200, L]  # a packing no other test uses: this test's capture looks its tables up first
    fn = (_attention("ring_attention", cu_seqlens=docs) if name == "ring_attention+docs"
          else _attention("ulysses_attention", layout="doc_zigzag", cu_seqlens=docs))
    cache = cached_positions if name == "ring_attention+docs" else _natural_order
    kept, junk = len(cache.captured), []

    def evict():
        assert len(cache.captured) > kept, "the capture's device tables were not kept"
        cached_positions.cache_clear()  # as an eviction by eager calls with many other packings would
        _natural_order.cache_clear()
        gc.collect()
        junk.extend(torch.full((1 << 16,), -7, dtype=torch.int32, device="cuda") for _ in range(64))  # reuse

    static = _qkv(grad=False)
    assert capture_forward(fn, static, [_fresh(static, 3)], after_capture=evict) == [0.0], name


def strategy_step(strategy: str, device, dtype):
    """A training step of the Llama-style model under ``strategy``'s layers at world 1, as the playground
    runs it (``runner.prepare``; head dim 64): ``step()`` zeroes the gradients, runs forward, loss, backward
    and the replicated weights' gradient sync, and returns the loss."""
    from odysseus_kernels.models import token_loss_sum
    from odysseus_kernels.playground.runner import RunConfig, prepare

    rc = RunConfig(seq_len=128, hidden=128, heads=2, kv_heads=1, intermediate=256, vocab=128, layers=2, batch=2,
                   steps=1, warmup=0)
    model, plan, ids, labels, pos = prepare(strategy, rc, device=device, dtype=dtype)

    def step():
        model.zero_grad(set_to_none=True)
        loss = token_loss_sum(model(ids, pos), labels)
        loss.backward()
        plan.finish_backward()
        return loss.detach()

    return step


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_layers_do_not_sync_the_host(strategy):
    """The layers that combine the ops (TP-SP, Odysseus, LASP-2H, every SP core) and the model around them:
    a bf16 training step (after a warm-up step) under sync-debug mode "error" (default validation)."""
    step = strategy_step(strategy, torch.device("cuda"), torch.bfloat16)
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(loss).item(), strategy
