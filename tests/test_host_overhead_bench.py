"""benchmarks/host_overhead.py's plain-transport measurement (``--p2p-latency``) returns one row per
compute time, from both ranks, with sane statistics (a short run; the numbers themselves are the
benchmark's, never asserted here)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import host_overhead  # noqa: E402


def test_p2p_latency_rows():
    rows = host_overhead.measure_p2p(40, work_ms=(0.0, 0.5), timeout=300)
    assert [r["what"] for r in rows] == ["one exchange, 0 ms of compute between post and wait",
                                         "one exchange, 0.5 ms of compute between post and wait"]
    for r, work in zip(rows, (0.0, 0.5)):
        assert r["n"] == 40 and r["path"] == "plain isend/irecv"
        assert work <= r["ms"] <= r["p99_ms"], r  # the busy compute is inside every timed exchange
        assert 0.0 <= r["frac_3ms"] <= 1.0, r


def test_fused_step_measurements_with_no_launcher_and_with_the_jit():
    """The per-step host measurement of the GPU path on CPU, each in a fresh interpreter: the kernels
    stubbed under the interpreter (no launcher), and Triton's real JIT with the recording driver, in both
    launch modes (direct, the default, and every launch through the JIT) and direct launches handing the
    launcher tensors; each has its rows, and the JIT measurement profiles of the backward step and of the
    set-up of a call's two schedules."""
    st = host_overhead.measure_steps(quick=True, device="cpu")
    jit = host_overhead.measure_steps(quick=True, device="cpu-jit")
    assert set(st) >= {"fwd_step_us", "bwd_step_us", "setup_us"} and "fwd_step_jit_us" not in st, st
    assert jit["dtype"] == "float32", jit
    for m, dev in ((st, "cpu"), (jit, "cpu-jit")):
        keys = [key for key, _ in host_overhead.STEP_ROWS[dev]]
        assert all(0.0 < m[key] < 1e6 for key in keys), (dev, m)
    # forward and backward in three modes (direct, through the JIT, direct with tensors to the launcher)
    assert len(host_overhead.STEP_ROWS["cpu-jit"]) == 6 and len(host_overhead.STEP_ROWS["cuda"]) == 7
    assert len(jit["bwd_jit_over_direct_per_round"]) == 5  # the modes timed in alternating rounds
    # where the backward step's host time goes: cProfile's top functions, each "us | calls | function"
    prof = jit["bwd_step_profile"]
    assert len(prof) >= 5 and any("fingerprint" in line for line in prof), prof
    assert all(len(line.split(" | ")) == 3 for line in prof), prof
    # and where the set-up of a call's two schedules goes (the schedules' constructors among the top)
    setup = jit["setup_profile"]
    assert len(setup) >= 5 and all(len(line.split(" | ")) == 3 for line in setup), setup
    assert any("ring.py" in line and "__init__" in line for line in setup), setup
    assert "setup_profile" not in st, st  # no launcher under the interpreter: nothing to tell


def test_the_recording_driver_keeps_launches_only_while_recording():
    d = host_overhead.RecordingDriver()
    run = d.launcher_cls(None, None)
    run(1, 2, 3)
    d.record = False
    run(4)
    assert d.calls == [(1, 2, 3)]
    assert d.utils.get_device_properties(0)["max_shared_mem"] == 232448
    assert d.get_current_target().arch == 90 and d.get_current_stream(0) == d.STREAM
    assert d.load_binary("k", b"", 0, 0)[1] != d.load_binary("k", b"", 0, 0)[1]  # a handle per compiled kernel


def test_breakdown_of_the_cpu_rings_host_time():
    """The split of a ring call's host CPU time (2 gloo ranks): every part took time, and the parts (each
    the slowest rank's) add up to about the total (nested timed calls counted once: the check's own wait
    is the check's)."""
    rows = host_overhead.measure_breakdown(2, quick=True)
    split = [r for r in rows if r["what"].startswith("breakdown: ")]
    by = {r["what"].split(": ", 1)[1].split(" ")[0]: r for r in split}
    assert len(split) == 6 and by["ring"]["share"] == 1.0, rows
    # labelled with the shape measured (the same formatter and shape as the ring-vs-bare rows)
    assert {r["shape"] for r in rows} == {host_overhead.shape_of(host_overhead.CPU_SHAPE)} == {"B1 C64 H2 D32 float32"}
    parts = [r for r in split if not r["what"].startswith("breakdown: ring")]
    assert all(r["cpu_us"] > 0 for r in parts), rows  # every part took time: posting, waits, check, kernels, rest
    assert abs(sum(r["cpu_us"] for r in parts) - by["ring"]["cpu_us"]) < 0.25 * by["ring"]["cpu_us"], rows
    # context: the ring's 4 kernel calls (2 steps forward, 2 backward: one planned block each) replayed alone,
    # and the thread's system time and context switches per call (how many depends on the machine)
    alone, system = (r for r in rows if r["what"].startswith("context: "))
    assert "the 4 block kernel calls" in alone["what"] and 0 < alone["cpu_us"], rows
    assert system["cpu_us"] >= 0 and system["voluntary_switches"] >= 0 and system["involuntary_switches"] >= 0, rows
    assert f"{system['voluntary_switches']:.1f} voluntary" in system["what"], rows


def test_the_tensors_mode_keeps_the_key_and_hands_the_launcher_the_arguments():
    """The "_tensors" step mode wraps a prepared launch's fingerprint: the same key (or the same miss), the
    launcher given the arguments as they are instead of the addresses the fingerprint read."""
    seen = []

    def fingerprint(args):
        seen.append(args)
        return None if args[0] is None else (("key", 3), (1234, args[1]))

    wrapped = host_overhead._TensorsToLauncher(fingerprint)
    args = ("tensor", 7)
    assert wrapped(args) == (("key", 3), args)
    assert wrapped((None, 7)) is None
    assert seen == [args, (None, 7)]
