"""Plots people can read (#19.7): a distinct colour and marker per strategy, no overlapping tick
labels, truthful reasons for the points the planner plot leaves out, and a blockwise-MLP report over
the strategies where the MLP chunking matters."""
import types

import pytest

from odysseus_kernels.costmodel.plot_style import ORDER, strategy_style
from odysseus_kernels.playground.runner import MLP_CHUNKING_STRATEGIES, STRATEGIES, RunConfig
from tests.distributed import run_world

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")


def test_every_strategy_has_its_own_colour_and_marker():
    assert set(STRATEGIES) <= set(ORDER)
    styles = {s: strategy_style(s) for s in ORDER}
    assert len({st["color"] for st in styles.values()}) == len(ORDER)
    assert len({st["marker"] for st in styles.values()}) == len(ORDER)
    # ring and zigzag have the same closed form: their lines coincide, so the style must differ too
    assert styles["ring"]["linestyle"] != styles["zigzag"]["linestyle"]
    assert strategy_style("ring") == styles["ring"]  # stable
    assert strategy_style("not_a_strategy")["color"]  # unknown names still get a look


def _rows(names):
    return [{"strategy": s, "step_time_ms": 10.0 + i, "comm_per_layer_bytes": 2**20 * (1 + (i % 3)),
             "peak_memory_bytes": None, "saved_activation_bytes": 2**20 * (i + 1)} for i, s in enumerate(names)]


def test_playground_figures_distinct_and_without_overlapping_labels():
    import matplotlib.pyplot as plt

    from odysseus_kernels.playground.report import _labels_overlap, comm_figure, time_memory_figure

    names = list(STRATEGIES)  # all 11 strategies at once (the case that used to repeat colours)
    rc = types.SimpleNamespace(seq_len=64)
    xs = [64 * 2**i for i in range(8)]
    curves = {s: (xs, [x * (1 + (i % 2 == 0 and s in ("ring", "zigzag"))) * 1000.0 for x in xs])
              for i, s in enumerate(names)}
    fig, axes = comm_figure(_rows(names), curves, rc)
    lines = [ln for ln in axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert sorted(ln.get_label() for ln in lines) == sorted(names)
    assert len({ln.get_color() for ln in lines}) == len(names)
    assert len({ln.get_marker() for ln in lines}) == len(names)
    assert len({(ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in lines}) == len(names)
    assert _labels_overlap(fig, axes) == []
    plt.close(fig)
    fig, axes = time_memory_figure(_rows(names))
    labels = {t.get_text(): t.get_position()[1] for t in axes[0].get_yticklabels()}
    assert sorted(labels, key=labels.get, reverse=True) == names  # first strategy on top
    bars = axes[0].patches
    assert len({tuple(b.get_facecolor()) for b in bars}) == len(names)
    assert _labels_overlap(fig, axes) == []
    plt.close(fig)


def test_planner_plot_gives_the_true_reason_for_missing_points(tmp_path):
    from odysseus_kernels.costmodel.planner import _missing_notes, plot_plan, sweep, sweep_detail

    d = sweep_detail("llama3-8b", [65536], [16, 64], ["ulysses", "zigzag"])
    reasons = {(s, g): why for s, pts in d.items() for _, g, _, why in pts}
    # ulysses at 64 GPUs: 32 heads cannot be split 64 ways (not a memory problem)
    assert "divisible" in reasons[("ulysses", 64)] and "memory" not in reasons[("ulysses", 64)]
    assert reasons[("zigzag", 64)] == "" and reasons[("ulysses", 16)] == ""
    notes = _missing_notes(d, 1, "GPUs")
    assert any(n.startswith("ulysses: infeasible at 64 GPUs: heads (32) must be divisible") for n in notes), notes
    assert not any("ulysses: out of memory at 64" in n for n in notes)
    # sweep() keeps its format (None for a point left out)
    assert sweep("llama3-8b", [65536], [64], ["ulysses"])["ulysses"] == [(65536, 64, None)]
    png = tmp_path / "plan.png"
    assert plot_plan(str(png), "llama3-8b", "64K", 16, ["ulysses", "zigzag", "ring", "rsa"]) == str(png)
    assert png.stat().st_size > 0


def test_planner_plot_text_and_labels(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from odysseus_kernels.costmodel import planner
    from odysseus_kernels.playground.report import _labels_overlap

    seen = {}
    real_savefig = plt.Figure.savefig

    def grab(fig, path, *a, **k):
        seen["fig"] = fig
        seen["texts"] = [t.get_text() for t in fig.texts]
        seen["overlap"] = _labels_overlap(fig, fig.axes[:2])
        return real_savefig(fig, path, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", grab)
    planner.plot_plan(str(tmp_path / "p.png"), "llama3-8b", "64K", 16, ["ulysses", "zigzag", "ring", "rsa"])
    text = "\n".join(seen["texts"])
    assert "points that do not fit in memory are left out" not in text  # the old, untruthful title
    assert "ulysses: infeasible at 64 GPUs: heads (32) must be divisible by the Ulysses degree (64)" in text
    assert "rsa: out of memory at" in text
    assert seen["overlap"] == []


def test_format_blockwise_lists_the_strategies_where_it_matters():
    from odysseus_kernels.playground.report import format_blockwise

    assert "ring" in MLP_CHUNKING_STRATEGIES and "zigzag" in MLP_CHUNKING_STRATEGIES
    assert "tp_sp" not in MLP_CHUNKING_STRATEGIES and "odysseus" not in MLP_CHUNKING_STRATEGIES
    rows = lambda d, b: [{"seq_len": L, "mlp_chunk_size": c, "saved_activation_bytes": (d if c is None else b) * L * 2**14,  # noqa: E731
                          "peak_memory_bytes": None, "grad_max_rel_err": 1e-6} for L in (16, 32) for c in (None, 2)]
    rc = types.SimpleNamespace(strategies=("tp_sp", "ring", "zigzag"))
    text = format_blockwise({"ring": rows(4, 2), "zigzag": rows(4, 2)}, rc)
    assert "ring" in text and "zigzag" in text and "1.000 -> 0.500" in text
    assert "not measured: tp_sp" in text
    text = format_blockwise({}, types.SimpleNamespace(strategies=("tp_sp",)))
    assert "select e.g. ring" in text


def _blockwise_ring():
    from odysseus_kernels.playground.runner import blockwise_report

    rc = RunConfig(strategies=("tp_sp", "ring"), seq_len=16, steps=1, dtype="float32", device="cpu")
    return blockwise_report(rc, rc.strategies, 2)


def test_blockwise_report_measures_ring_not_tp_sp():
    rep = run_world(_blockwise_ring, 2, timeout=300)[0]
    assert list(rep) == ["ring"]
    by = {(r["seq_len"], r["mlp_chunk_size"]): r["saved_activation_bytes"] for r in rep["ring"]}
    for L in (16, 32):
        assert by[(L, 2)] < 0.8 * by[(L, None)], by  # the chunked MLP saves much less
    assert max(r["grad_max_rel_err"] for r in rep["ring"]) < 1e-4
