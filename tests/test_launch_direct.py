"""Direct Triton launches (``odysseus_kernels.kernels.launch``, issue #18: host time per ring step).

The real checks run in a fresh interpreter without ``TRITON_INTERPRET`` (tests/launch_check.py: the
kernels compiled for sm_90, Triton's driver replaced by a recorder), under the Triton this environment
imports and under the GPU machine's (``ODYSSEUS_TRITON_B``: the directory ``scripts/dev.sh`` installs it
into; CI always sets it). Here: the switch, the fall-backs and the fingerprint's refusals, in-process.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from odysseus_kernels.kernels import launch as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(pythonpath: str | None) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, ROOT, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "launch_check.py")], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _assert_facts(f: dict) -> None:
    assert f["kernels"] == ["_bwd_dkdv_kernel", "_bwd_dq_kernel", "_bwd_preprocess_kernel", "_chunk_local_kernel",
                            "_chunk_out_kernel", "_chunk_scan_kernel", "_fwd_kernel", "_gemm_kernel"], f
    # every launch (the ring's steps, the per-block calls, LASP-2's chunk kernels, the GEMM): the JIT's
    # compiled kernel and launcher call, made directly
    assert f["mismatches"] == [], f["mismatches"]
    assert f["launches"] == 40 and f["direct"] == 23, f  # 17 first launches (of 17 fingerprints) through the JIT
    # a warm ring call (3 forward, 1 preprocess, 3 dQ, 3 dK/dV launches): nothing through the JIT ...
    assert f["warm_call"] == [0, 10] and f["after_call"] == [0, 10], f
    # ... unless a launch hook or a pre-run hook is installed or the mode is "jit": then all of it
    assert f["hooked_call"] == [10, 10] and f["pre_run_hooked_call"] == [10, 10], f
    assert f["jit_mode_call"] == [10, 10], f
    assert f["keys_differ"] == [True, True, True], f  # another device / the debug option: another key
    # a callable grid: through the JIT; with the bound on kept fingerprints reached, a new fingerprint
    # starts the cache over (one JIT launch, then direct)
    assert f["grid_and_bound"] == [1, 2, 1, 2], f
    fp = f["fingerprints"]
    assert fp["violations"] == [], fp["violations"][:5]
    assert fp["merged"] >= 400 and fp["none"] >= 400, fp  # the comparison had shared fingerprints to test


def test_direct_launches_match_the_jit():
    f = _check(None)
    assert f["triton"] == __import__("triton").__version__
    _assert_facts(f)


def test_direct_launches_match_the_jit_of_the_gpu_machines_triton():
    path = os.environ.get("ODYSSEUS_TRITON_B")
    if not path:
        pytest.skip("ODYSSEUS_TRITON_B (the second Triton's directory) is set by scripts/dev.sh test")
    f = _check(os.path.abspath(path))
    assert f["triton"] == os.path.basename(os.path.normpath(path)).split("triton-")[-1], f["triton"]
    _assert_facts(f)


def test_the_mode_switch():
    assert L.get_triton_launch() == "direct"
    with pytest.raises(ValueError, match="direct"):
        L.set_triton_launch("fast")
    L.set_triton_launch("jit")
    try:
        assert L.get_triton_launch() == "jit"
    finally:
        L.set_triton_launch("direct")
    # the block form restores the previous mode, also when the block raises, and checks the mode first
    with L.triton_launch("jit") as m:
        assert m == "jit" and L.get_triton_launch() == "jit"
        with L.triton_launch("direct"):
            assert L.get_triton_launch() == "direct"
        assert L.get_triton_launch() == "jit"
    assert L.get_triton_launch() == "direct"
    with pytest.raises(KeyError):
        with L.triton_launch("jit"):
            raise KeyError("inside")
    assert L.get_triton_launch() == "direct"
    with pytest.raises(ValueError, match="direct"):
        with L.triton_launch("fast"):
            raise AssertionError("the block must not run with a bad mode")
    assert L.get_triton_launch() == "direct"
    import odysseus_kernels as ok

    assert ok.set_triton_launch is L.set_triton_launch and ok.get_triton_launch is L.get_triton_launch
    assert ok.triton_launch is L.triton_launch


def test_one_prepared_launch_per_kernel_and_constexprs():
    from odysseus_kernels.kernels.attention import triton_attention as ta

    a = L.prepared(ta._fwd_kernel, D=16, BM=32, num_warps=4)
    assert L.prepared(ta._fwd_kernel, num_warps=4, BM=32, D=16) is a
    assert L.prepared(ta._fwd_kernel, D=16, BM=64, num_warps=4) is not a
    assert L.prepared(ta._bwd_dq_kernel, D=16, BM=32, num_warps=4) is not a


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter's kernels")
def test_an_interpreted_kernel_always_launches_through_the_jit():
    from odysseus_kernels.kernels.attention.triton_attention import ShardKernels

    q = torch.randn(1, 16, 2, 16)
    out, lse = torch.empty(1, 16, 2, 16), torch.empty(1, 2, 16)
    shard = ShardKernels(q, hk=2, dv=16, causal=True)
    shard.fwd(q, q, out, lse, first=True)
    n = shard._launches["fwd"][1].jit_launches
    shard.fwd(q, q, out, lse, first=False)
    pl = shard._launches["fwd"][1]
    assert pl.jit_launches == n + 1 and pl.kernels == {} and not pl._eligible


class _P:  # a KernelParam's fields the fingerprint reads
    def __init__(self, name, constexpr=False, unspecialized=False):
        self.name, self.is_constexpr, self.do_not_specialize = name, constexpr, unspecialized


def test_the_fingerprint_refuses_what_it_cannot_key():
    params = [_P("X"), _P("n"), _P("m", unspecialized=True), _P("s", unspecialized=True)]
    x = torch.zeros(8)
    fp = L.fingerprint_function(params, (x, 16, 5, 0.5))
    assert fp((x, 16, 5, 0.5)) == fp((torch.zeros(8), 16, 7, 0.25))  # same kinds, unspecialized m, fp32 s
    assert fp((x, 16, 5, 0.5)) != fp((x[1:], 16, 5, 0.5))  # 4-byte offset: another alignment
    assert fp((x, 16, 5, 0.5)) != fp((x.half(), 16, 5, 0.5))  # another dtype
    assert fp((x, 16, 5, 0.5)) != fp((x, 17, 5, 0.5))  # a specialized integer's value
    specialized = L.fingerprint_function(params[:3] + [_P("s")], (x, 16, 5, 0.5))
    for other in (0.25, float("nan"), 1e40):  # a float is fp32 whatever its value, specialized or not
        assert specialized((x, 16, 5, 0.5)) == specialized((x, 16, 5, other))
    assert fp((x, 16, 5, 0.5)) != fp((x, 16, 2 ** 31, 0.5))  # out of i32: keyed by value
    assert fp((x, True, 5, 0.5)) is None and fp((x, 16, 5, 1)) is None  # a scalar changed type
    assert fp((x, 16, 5)) is None  # another number of arguments
    with pytest.raises(AttributeError):
        fp((3, 16, 5, 0.5))  # a tensor position without a tensor: the launch goes through the JIT
    with pytest.raises(ValueError, match="neither a tensor"):
        L.fingerprint_function(params, (None, 16, 5, 0.5))

    class OnGpu(torch.Tensor):  # what the fingerprint reads of a GPU tensor, on a machine without one
        is_cuda = property(lambda self: True)

    assert fp((x.as_subclass(OnGpu), 16, 5, 0.5)) != fp((x, 16, 5, 0.5))  # a host tensor never shares a GPU one's kernel
    # with the launcher's arguments: the same key, each tensor as its address (the launcher's own reading)
    both = L.fingerprint_function(params, (x, 16, 5, 0.5), with_args=True)
    y = torch.zeros(8)
    assert both((y, 16, 7, 0.25)) == (fp((y, 16, 7, 0.25)), (y.data_ptr(), 16, 7, 0.25))
    assert both((x, True, 5, 0.5)) is None


def test_idle_hooks():
    class Chain:
        def __init__(self, calls):
            self.calls = calls

    assert L._idle(None) and L._idle(Chain([]))
    assert not L._idle(Chain([print])) and not L._idle(print)
