"""benchmarks/host_overhead.py's plain-transport measurement (``--p2p-latency``) returns one row per
compute time, from both ranks, with sane statistics (a short run; the numbers themselves are the
benchmark's, never asserted here)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import host_overhead  # noqa: E402
from tests.triton_device import needs_interpreter  # noqa: E402


def test_p2p_latency_rows():
    rows = host_overhead.measure_p2p(40, work_ms=(0.0, 0.5), timeout=300)
    assert [r["what"] for r in rows] == ["one exchange, 0 ms of compute between post and wait",
                                         "one exchange, 0.5 ms of compute between post and wait"]
    for r, work in zip(rows, (0.0, 0.5)):
        assert r["n"] == 40 and r["path"] == "plain isend/irecv"
        assert work <= r["ms"] <= r["p99_ms"], r  # the busy compute is inside every timed exchange
        assert 0.0 <= r["frac_3ms"] <= 1.0, r


def test_fused_step_rows_with_and_without_the_launchers_binding():
    """The per-step host measurement of the GPU path on CPU (a fresh interpreter, the kernels stubbed):
    the plain steps, and the same steps with Triton's own sm_90 argument binding in every launch."""
    st = host_overhead.measure_steps(quick=True, device="cpu")
    for key in ("fwd_step_us", "bwd_step_us", "fwd_step_bound_us", "bwd_step_bound_us", "setup_us"):
        assert 0.0 < st[key] < 1e6, st


@needs_interpreter
def test_bound_stub_runs_the_jit_binder(monkeypatch):
    """``_stub_triton_launch(bind=True)``: each launch goes through ``JitBinding`` (the JIT's own binder) and
    computes nothing."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from odysseus_kernels.kernels import aot
    from odysseus_kernels.kernels.attention.triton_attention import attention_block_fwd_triton

    calls = []
    real = aot.JitBinding.__call__
    monkeypatch.setattr(aot.JitBinding, "__call__", lambda self, *a, **kw: calls.append(self.name) or real(self, *a, **kw))
    monkeypatch.setattr(InterpretedFunction, "run", InterpretedFunction.run)  # restored after the test
    host_overhead._stub_triton_launch(bind=True)
    q = torch.randn(1, 32, 2, 16)
    out, lse = attention_block_fwd_triton(q, q, q, causal=True)
    assert calls == ["_fwd_kernel"]
    assert out.shape == (1, 32, 2, 16) and lse.shape == (1, 2, 32)
