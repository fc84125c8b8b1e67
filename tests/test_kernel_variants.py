"""Compiled kernel variants per call, counted on CPU. Every Triton launch of an op's forward and backward
is keyed the way Triton's JIT keys its compile cache on a GPU: the sm_90 CUDA backend's specialization
of each argument (dtype; pointers and integers divisible by 16; integers equal to 1; constexpr values)
and the launch options, computed by Triton's own binder while the interpreter runs the launch.

Why: a value that changes from ring step to ring step (an offset, a length, a first-step flag, the
other K/V buffer, a travelling accumulator) and is specialized on would compile a new variant of the
kernel in the middle of the first GPU call (seconds each) and add a cache entry per value. Asserted for
the ring (contiguous, zigzag, packed documents, a sliding window), TokenRing, all-gather-KV, Ulysses,
LASP-2 and the fused TP GEMMs on 3 gloo ranks: one variant per kernel in a call's forward and backward,
and no new variant on a second call with the same shapes (its key set is the first call's).
Attention and LASP-2 launches are keyed in bf16 (the flagship dtype) with the kernel bodies skipped
(only the keys are under test; the interpreter's bf16 ``tl.dot`` is wrong anyway); the fused GEMMs run
in fp16, because their host checks the flags the kernels set.
"""
import os
import sys
import typing

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from tests.distributed import run_world
from tests.triton_device import needs_interpreter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import host_overhead  # noqa: E402  (its ring_schedules drives a ring in one process, for the cuda test)

N = 3


class _Launch(typing.NamedTuple):
    """One recorded launch, as the JIT on an sm_90 GPU would see it."""
    kernel: str
    args: dict  # argument name -> the JIT's specialization: (type, attribute) or ("constexpr", value)
    declared: tuple  # per argument, whether the kernel declares it tl.constexpr (the binding's own tuple)
    options: dict  # num_warps, num_stages
    key: str  # built like the JIT's compile-cache key

    @property
    def runtime(self) -> tuple:
        """The specializations of the non-constexpr arguments (what the JIT derives from their values)."""
        return tuple(str(x) for x, c in zip(self.args.values(), self.declared) if not c)

    @property
    def constexprs(self) -> tuple:
        """The constexpr values (what the wrapper chose)."""
        return tuple(str(x[1]) for x, c in zip(self.args.values(), self.declared) if c)


class _JitKeys:
    """While active: every interpreted Triton launch is recorded in ``launches`` (a ``_Launch`` each) for
    an sm_90 CUDA target. ``run_kernels=False`` skips the kernel body; ``honour_do_not_specialize=False``
    keys launches as if the kernels specialized every argument (the check of this test's own teeth)."""

    def __init__(self, run_kernels: bool, *, honour_do_not_specialize: bool = True):
        self.run_kernels, self.honour = run_kernels, honour_do_not_specialize
        self.launches: list[_Launch] = []

    def __enter__(self):
        from triton.runtime.interpreter import InterpretedFunction

        from odysseus_kernels.kernels.aot import JitBinding

        self._orig = orig = InterpretedFunction.run
        launches, run_kernels, honour = self.launches, self.run_kernels, self.honour

        def run(fn_self, *args, grid, warmup, **kwargs):
            binding = JitBinding.of(fn_self if honour else fn_self.fn)  # the JIT's own binder, as on a GPU
            spec, options, key = binding(*args, **kwargs)
            launches.append(_Launch(binding.name, dict(zip(binding.names, spec)), binding.declared,
                                    {k: options[k] for k in ("num_warps", "num_stages") if k in options}, key))
            if run_kernels:
                return orig(fn_self, *args, grid=grid, warmup=warmup, **kwargs)
            return None

        InterpretedFunction.run = run
        return self

    def __exit__(self, *exc):
        from triton.runtime.interpreter import InterpretedFunction

        InterpretedFunction.run = self._orig

    def variants(self) -> list[tuple[str, tuple, tuple, str]]:
        """``(kernel, runtime specialization, constexprs, key)`` per launch (plain tuples: they cross processes)."""
        return [(x.kernel, x.runtime, x.constexprs, x.key) for x in self.launches]


def _attention_call(op, layout, causal, window, docs, heads=(4, 2), c=64):
    n = comm.group_info().size
    (h, hk), d = heads, 64
    L = c * n
    cu = None if docs is None else [0] + [x * L // 32 for x in docs] + [L]  # cut points in 32nds of the stream
    g = torch.Generator().manual_seed(3)
    full = [torch.randn(1, L, hh, d, generator=g) for hh in (h, hk, hk, h)]
    sh = lambda t: ok.shard_sequence(t, layout=layout, cu_seqlens=cu).to(torch.bfloat16)  # noqa: E731
    q, k, v = (sh(t).requires_grad_(True) for t in full[:3])
    dout = sh(full[3])
    kw = dict(causal=causal, layout=layout, cu_seqlens=cu, backend="triton")
    if window is not None:
        kw["window_size"] = window
    return lambda: getattr(ok, op)(q, k, v, **kw), lambda out: out.backward(dout)


def _lasp2_call():
    g = torch.Generator().manual_seed(4)
    q, k, v, dout = (torch.randn(1, 100, 4, d, generator=g).to(torch.bfloat16) for d in (32, 32, 64, 64))
    decay = -torch.rand(1, 100, 4, generator=g)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    return lambda: ok.lasp2_linear_attention(*leaves, g=decay, backend="triton"), lambda out: out.backward(dout)


def _gemm_call(op):
    n = comm.group_info().size
    g = torch.Generator().manual_seed(5)
    # feature dims in multiples of 16 (model widths; what the compile gate assumes), an odd row count
    if op == "all_gather_linear":
        x, w = torch.randn(2, 7, 64, generator=g), torch.randn(48, 64, generator=g)
        dout = torch.randn(2, 7 * n, 48, generator=g)
    else:
        x, w = torch.randn(2, 7 * n, 64, generator=g), torch.randn(48, 64, generator=g)
        dout = torch.randn(2, 7, 48, generator=g)
    x, w = (t.to(torch.float16).requires_grad_(True) for t in (x, w))
    b = torch.randn(48, generator=g).to(torch.float16).requires_grad_(True)
    return lambda: getattr(ok, op)(x, w, b, impl="fused"), lambda out: out.backward(dout.to(torch.float16))


# case -> (the call, run the kernel bodies, {(phase, kernel): variants}). Variants beyond one are the
# wrappers' constexpr choices, never a step's values: TokenRing and all-gather-KV launch per planned
# block, a block on the causal diagonal (CAUSAL=True) or fully visible (CAUSAL=False); LASP-2's
# backward runs its scan kernels in the REVERSE direction and its output kernel for dq, dk and dv
# (REVERSE x TRANS_H); each fused GEMM runs once per phase.
_RING = {("forward", "_fwd_kernel"): 1, ("backward", "_bwd_preprocess_kernel"): 1,
         ("backward", "_bwd_dq_kernel"): 1, ("backward", "_bwd_dkdv_kernel"): 1}
_BLOCKS = {("forward", "_fwd_kernel"): 2, ("backward", "_bwd_dq_kernel"): 2, ("backward", "_bwd_dkdv_kernel"): 2}
_GEMM = {("forward", "_gemm_kernel"): 1, ("backward", "_gemm_kernel"): 1}
CASES = {
    "ring-contiguous-causal": (lambda: _attention_call("ring_attention", "contiguous", True, None, None), False, _RING),
    "ring-zigzag-causal": (lambda: _attention_call("ring_attention", "zigzag", True, None, None), False, _RING),
    "ring-zigzag-noncausal": (lambda: _attention_call("ring_attention", "zigzag", False, None, None), False, _RING),
    # 38 tokens per rank: offsets and lengths that are not multiples of 16 (would a step specialize on them?)
    "ring-zigzag-causal-38tokens": (lambda: _attention_call("ring_attention", "zigzag", True, None, None, c=38), False,
                                    _RING),
    "token_ring-contiguous-38tokens": (lambda: _attention_call("token_ring_attention", "contiguous", True, None, None,
                                                               c=38), False, _BLOCKS),
    "ring-doc_zigzag-4docs": (lambda: _attention_call("ring_attention", "doc_zigzag", True, None, (6, 9, 21)), False,
                              _RING),
    "ring-contiguous-window": (lambda: _attention_call("ring_attention", "contiguous", True, (80, 0), None), False,
                               _RING),
    "token_ring-zigzag": (lambda: _attention_call("token_ring_attention", "zigzag", True, None, None), False, _BLOCKS),
    "token_ring-contiguous-3docs": (lambda: _attention_call("token_ring_attention", "contiguous", True, None, (5, 13)),
                                    False, _BLOCKS),
    "allgather_kv-zigzag": (lambda: _attention_call("allgather_kv_attention", "zigzag", True, None, None), False,
                            _BLOCKS),
    "ulysses-contiguous-3docs": (lambda: _attention_call("ulysses_attention", "contiguous", True, None, (5, 13),
                                                         heads=(6, 3)), False, _RING),
    "lasp2-decay": (_lasp2_call, False, {("forward", "_chunk_local_kernel"): 1, ("forward", "_chunk_scan_kernel"): 1,
                                         ("forward", "_chunk_out_kernel"): 1, ("backward", "_chunk_local_kernel"): 2,
                                         ("backward", "_chunk_scan_kernel"): 2, ("backward", "_chunk_out_kernel"): 3}),
    "all_gather_linear-fused": (lambda: _gemm_call("all_gather_linear"), True, _GEMM),
    "linear_reduce_scatter-fused": (lambda: _gemm_call("linear_reduce_scatter"), True, _GEMM),
}


def _variants(case):
    make, run_kernels, _ = CASES[case]
    fwd, bwd = make()
    calls = []
    for _ in range(2):
        with _JitKeys(run_kernels) as f:
            out = fwd()
        with _JitKeys(run_kernels) as b:
            bwd(out)
        calls.append({"forward": f.variants(), "backward": b.variants()})
    return calls


@needs_interpreter
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_variants_do_not_depend_on_the_step(case):
    expected = CASES[case][2]
    for rank, (first, second) in enumerate(run_world(_variants, N, case, timeout=600)):
        seen = {}
        for phase, launches in first.items():
            for name, runtime, constexprs, _ in launches:
                seen.setdefault((phase, name), []).append((runtime, constexprs))
        assert seen, f"rank {rank}: no Triton launch recorded"
        print(f"rank {rank} {case}: " + ", ".join(
            f"{p} {k}: {len(v)} launches, {len(set(c for _, c in v))} variant(s)" for (p, k), v in seen.items()))
        assert set(seen) <= set(expected), f"rank {rank}: unexpected kernels {sorted(set(seen) - set(expected))}"
        for (phase, name), items in seen.items():
            runtimes = {r for r, _ in items}
            assert len(runtimes) == 1, (
                f"rank {rank} {phase} {name}: the JIT would specialize its launches apart (a step's pointer "
                f"alignment or integer value): {sorted(runtimes)}")
            variants = {c for _, c in items}
            assert len(variants) <= expected[(phase, name)], (
                f"rank {rank} {phase} {name}: {len(variants)} constexpr variants, expected at most "
                f"{expected[(phase, name)]}: {sorted(variants)}")
        keys = lambda call: {(x[0], x[3]) for launches in call.values() for x in launches}  # noqa: E731  (per kernel)
        assert keys(second) <= keys(first), (f"rank {rank}: a second call with the same shapes compiles again: "
                                             f"{sorted(keys(second) - keys(first))}")


def _as_on_sm90():
    """The wrappers pick their sm_90 launch configs (tiles, warps, stages) while the interpreter runs."""
    from odysseus_kernels.kernels.attention import triton_attention
    from odysseus_kernels.kernels.gemm import persistent
    from odysseus_kernels.kernels.linear_attention import configs

    triton_attention._arch = lambda t: 90
    configs.arch_of = lambda device: 90
    persistent.device_arch = lambda device: 90


def _gate_mismatches(case):
    """Each launch of a call (with the sm_90 configs) against the compile gate's sm_90 cases: the cases
    of the same kernel, launch options, argument types and constexprs (JIT-specialized ones included,
    e.g. unit strides), and every argument a case compiles as divisible by 16 that
    this launch does not pass as such."""
    from odysseus_kernels.kernels import aot

    _as_on_sm90()
    make, run_kernels, _ = CASES[case]
    fwd, bwd = make()
    with _JitKeys(run_kernels) as rec:
        bwd(fwd())
    cases = [c for fam in aot.discover_families() for c in aot.family_cases(aot.family_module(fam)) if 90 in c.archs]
    problems, seen = [], set()
    for name, spec, options in ((x.kernel, x.args, x.options) for x in rec.launches):
        label = (name, tuple(sorted((a, str(v)) for a, v in spec.items())), tuple(sorted(options.items())))
        if label in seen:
            continue
        seen.add(label)
        found = []
        for c in cases:
            if getattr(c.fn, "fn", c.fn).__name__ != name or (c.num_warps, c.num_stages) != (
                    options.get("num_warps"), options.get("num_stages")):
                continue
            same = True
            for arg, (kind, attr) in spec.items():
                declared = c.signature[arg]
                if declared == "constexpr":
                    same = kind == "constexpr" and c.constexprs[arg] == attr
                else:
                    same = kind == declared
                if not same:
                    break
            if same:
                found.append(c)
        if not found:
            problems.append(f"{name}: no gate case compiles this launch ({spec}, {options})")
        for c in found:
            loose = [a for a in c.divisible_args() if spec[a][1] != "D"]
            if loose:
                problems.append(f"{name}: gate case {c.label} compiles {loose} as divisible by 16, the launch "
                                f"does not pass them so: {[spec[a] for a in loose]}")
    return problems, len(seen)


@needs_interpreter
@pytest.mark.parametrize("case", [c for c in CASES if "38tokens" not in c])  # the gate assumes multiples of 16
def test_the_compile_gate_compiles_what_runs(case):
    """What the gate measured on sm_90 (shared memory, registers, spills, wgmma) is what these calls compile:
    every distinct launch has a gate case with its signature, constexprs and options, and the gate's
    divisibility-by-16 assumptions hold for it (shapes with multiples of 16 tokens and head dims)."""
    for rank, (problems, distinct) in enumerate(run_world(_gate_mismatches, N, case, timeout=600)):
        assert distinct > 0, f"rank {rank}: no launch recorded"
        assert not problems, f"rank {rank}: " + "\n".join(problems)


def _fwd_if_everything_specialized(op, layout):
    fwd, _ = _attention_call(op, layout, True, None, None, c=38)
    with _JitKeys(False, honour_do_not_specialize=False) as rec:
        fwd()
    launches = [x.args for x in rec.launches if x.kernel == "_fwd_kernel"]
    return ({str(sorted(spec.items())) for spec in launches},
            {str(sorted((a, v) for a, v in spec.items() if a != "first")) for spec in launches})


@needs_interpreter
def test_a_specialized_step_value_would_be_caught():
    """Without the kernels' ``do_not_specialize`` the per-step values would key the launches apart (the
    check above would fail): the ring's first-step flag (its zigzag steps pass span positions, offsets 0),
    and at 38 tokens per rank TokenRing's block offsets as well."""
    for rank, (runtimes, _) in enumerate(run_world(_fwd_if_everything_specialized, N, "ring_attention", "zigzag")):
        assert len(runtimes) > 1, f"rank {rank}: {runtimes}"
    per_rank = run_world(_fwd_if_everything_specialized, N, "token_ring_attention", "contiguous")
    assert any(len(without_first) > 1 for _, without_first in per_rank), "only the first-step flag keys blocks apart"


@needs_interpreter
def test_keys_tell_apart_what_the_jit_specializes():
    """The recorder sees what the JIT would compile anew: a misaligned pointer (a view one element in)
    and a different constexpr give new keys; the same launch again gives the same key."""
    from odysseus_kernels.kernels.attention.triton_attention import attention_block_fwd_triton

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 65, 2, 32, generator=g) for _ in range(3))
    with _JitKeys(run_kernels=False) as rec:
        attention_block_fwd_triton(q[:, :64], k[:, :64], v[:, :64], causal=True)
        attention_block_fwd_triton(q[:, :64], k[:, :64], v[:, :64], causal=True)
        attention_block_fwd_triton(q[:, 1:], k[:, :64], v[:, :64], causal=True)  # q one row in: 256 B, aligned
        flat = torch.randn(1 * 64 * 2 * 32 + 1, generator=g)
        attention_block_fwd_triton(flat[1:].view(1, 64, 2, 32), k[:, :64], v[:, :64], causal=True)  # 4 B off
        attention_block_fwd_triton(q[:, :64, :, :16].contiguous(), k[:, :64, :, :16].contiguous(),
                                   v[:, :64, :, :16].contiguous(), causal=True)  # head dim 16: constexprs
    keys = [x.key for x in rec.launches]
    assert len(keys) == 5
    assert keys[0] == keys[1] == keys[2]
    assert len({keys[0], keys[3], keys[4]}) == 3


@needs_interpreter
def test_a_binding_is_built_once_per_kernel_and_arch():
    """``JitBinding.of``: the recorder binds every launch (and tests/launch_check.py thousands), so the
    binder is built once per kernel and target; a raw function (every argument specialized) gets its own."""
    from odysseus_kernels.kernels.aot import JitBinding
    from odysseus_kernels.kernels.attention import triton_attention as ta

    kern = ta._fwd_kernel
    assert JitBinding.of(kern) is JitBinding.of(kern)
    assert JitBinding.of(kern, arch=80) is not JitBinding.of(kern)
    assert JitBinding.of(kern.fn) is not JitBinding.of(kern)
    assert JitBinding.of(ta._bwd_dq_kernel).name == "_bwd_dq_kernel"


@needs_interpreter
def test_the_cuda_tests_ring_driving_keys_one_variant_per_kernel():
    """The driving of the cuda test below, on CPU (bf16 keyed, kernel bodies skipped): every Triton kernel
    of the ring's forward and backward is launched, each with one JIT key, and the same steps again add none."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 256, 2, 64, generator=g).bfloat16() for _ in range(4))
    with _JitKeys(run_kernels=False) as first:
        host_overhead.ring_in_one_process(3, q, k, v, do)
    with _JitKeys(run_kernels=False) as again:
        host_overhead.ring_in_one_process(3, q, k, v, do)
    keys = {}
    for x in first.launches:
        keys.setdefault(x.kernel, set()).add(x.key)
    assert set(keys) == {"_fwd_kernel", "_bwd_preprocess_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"}, keys
    assert all(len(v) == 1 for v in keys.values()), keys
    assert {x.key for x in again.launches} == {x.key for x in first.launches}
    assert sum(x.kernel == "_fwd_kernel" for x in first.launches) == 3  # one per step


@pytest.mark.cuda
def test_the_jit_compiles_a_ring_call_once_on_the_gpu():
    """On a GPU, the JIT itself: a world-of-three zigzag ring's steps driven in one process
    (``host_overhead.ring_in_one_process``; bf16, d64) launch one compiled kernel per Triton kernel,
    and the same steps again compile nothing."""
    from odysseus_kernels.kernels.attention import triton_attention as ta

    kernels = (ta._fwd_kernel, ta._bwd_preprocess_kernel, ta._bwd_dq_kernel, ta._bwd_dkdv_kernel)
    cached = lambda: [sum(len(c[0]) for c in k.device_caches.values()) for k in kernels]  # noqa: E731
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, 256, 2, 64, device="cuda", generator=g).bfloat16() for _ in range(4))

    def ring_steps():
        host_overhead.ring_in_one_process(3, q, k, v, do)
        torch.cuda.synchronize()

    launched = {kern.fn.__name__: [] for kern in kernels}  # the compiled kernel of every launch
    for kern in kernels:
        def run(*a, _run=kern.run, _name=kern.fn.__name__, **kw):
            compiled = _run(*a, **kw)
            launched[_name].append(id(compiled))
            return compiled
        kern.run = run  # shadows JITFunction.run (what kernel[grid](...) calls)
    try:
        ring_steps()
        first = {name: set(ids) for name, ids in launched.items()}
        before = cached()
        ring_steps()
    finally:
        for kern in kernels:
            del kern.run
    assert all(len(ids) == 1 for ids in first.values()), first
    assert {name: set(ids) for name, ids in launched.items()} == first
    assert cached() == before
