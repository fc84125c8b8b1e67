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
