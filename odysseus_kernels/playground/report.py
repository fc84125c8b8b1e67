"""The playground's output: the table, JSON/CSV files and PNG plots (the progress line is the runner's)."""
from __future__ import annotations

import csv
import json
import os


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def summarize(per_rank: list[list[dict]], rc, expected: dict) -> list[dict]:
    """One row per strategy: times are the slowest rank's, communication the busiest rank's."""
    rows = []
    n_layers = rc.layers
    for i, s in enumerate(rc.strategies):
        ranks = [r[i] for r in per_rank]
        act_recv = max(r["activation_comm"]["bytes_received"] - r["activation_comm"]["by_kind"].get("metadata", {}).get("received", 0) for r in ranks)
        rows.append({
            "strategy": s,
            "step_time_ms": 1e3 * max(r["step_time_s"] for r in ranks),
            "loss": ranks[0]["loss"],
            "loss_rel_err": max(r["loss_rel_err"] for r in ranks),
            "grad_max_rel_err": max(r["grad_max_rel_err"] for r in ranks),
            "comm_per_layer_bytes": act_recv / n_layers,
            "comm_per_layer_expected_bytes": expected.get(s),
            "grad_sync_bytes": max(r["grad_sync_comm"]["bytes_received"] for r in ranks),
            "saved_activation_bytes": max(r["saved_activation_bytes"] for r in ranks),
            "peak_memory_bytes": None if ranks[0]["peak_memory_bytes"] is None else max(r["peak_memory_bytes"] for r in ranks),
            "comm_by_kind": ranks[0]["activation_comm"]["by_kind"],
        })
    return rows


def format_table(rows: list[dict], rc, world: int, device: str) -> str:
    head = (f"odysseus playground: world {world} ({device}), seq {rc.seq_len}, batch {rc.batch}, layers {rc.layers}, "
            f"hidden {rc.hidden}, heads {rc.heads}/{rc.kv_heads} kv, {rc.dtype}, {rc.steps} steps\n")
    cols = ["strategy", "step ms", "loss", "loss err", "grad err", "comm/layer KiB", "theory KiB", "grad sync KiB",
            "saved act MiB" if rows and rows[0]["peak_memory_bytes"] is None else "peak MiB"]
    lines = []
    for r in rows:
        exp = r["comm_per_layer_expected_bytes"]
        mem = r["saved_activation_bytes"] if r["peak_memory_bytes"] is None else r["peak_memory_bytes"]
        lines.append([r["strategy"], f"{r['step_time_ms']:.1f}", f"{r['loss']:.4f}", f"{r['loss_rel_err']:.1e}",
                      f"{r['grad_max_rel_err']:.1e}", f"{r['comm_per_layer_bytes'] / 1024:.1f}",
                      "-" if exp is None else f"{exp / 1024:.1f}", f"{r['grad_sync_bytes'] / 1024:.1f}", _mib(mem)])
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    fmt = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    out = [head, fmt(cols), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines]
    note = ("\ncomm/layer: bytes received per rank per layer (forward + backward, busiest rank) measured by "
            "ok.comm_ledger; theory: the closed form of the cost model; grad sync: all-reduce of replicated "
            "weights' gradients per step; errors: max relative error of loss / any parameter gradient vs the "
            "single-device float64 model.")
    if rows and rows[0]["peak_memory_bytes"] is None:
        note += " saved act: bytes autograd saved for backward (CPU has no allocator peak; this is the activation memory)."
    return "\n".join(out) + "\n" + note


def format_blockwise(report: dict, rc) -> str:
    """The blockwise-MLP memory table: for every strategy where the MLP chunking matters, the
    activation memory at two sequence lengths with the dense and with the blockwise MLP."""
    from .runner import NO_MLP_CHUNKING

    skipped = [s for s in rc.strategies if s in NO_MLP_CHUNKING]
    head = "\nblockwise MLP (LWM/BPT memory mode)"
    if not report:
        return (head + ": none of the selected strategies runs the model's own MLP on local tokens "
                f"({', '.join(skipped)} use a TP/ZeRO MLP without a chunked mode); select e.g. ring or zigzag.")
    first = next(iter(report.values()))
    mem = "peak_memory_bytes" if first and first[0]["peak_memory_bytes"] is not None else "saved_activation_bytes"
    label = "peak MiB" if mem == "peak_memory_bytes" else "saved act MiB"
    seqs = sorted({r["seq_len"] for r in first})
    c = next(r["mlp_chunk_size"] for r in first if r["mlp_chunk_size"])
    lines = [head + f", mlp_chunk_size={c}, {label} (dense -> blockwise):"]
    cols = ["strategy"] + [f"seq {L}" for L in seqs] + [f"growth {seqs[0]}->{seqs[-1]}", "grad err"]
    table = []
    for s, rows in report.items():
        by = {(r["seq_len"], r["mlp_chunk_size"]): r[mem] for r in rows}
        cells = [s] + [f"{by[(L, None)] / 2**20:.3f} -> {by[(L, c)] / 2**20:.3f}" for L in seqs]
        cells.append(f"+{(by[(seqs[-1], None)] - by[(seqs[0], None)]) / 2**20:.3f} -> "
                     f"+{(by[(seqs[-1], c)] - by[(seqs[0], c)]) / 2**20:.3f}")
        cells.append(f"{max(r['grad_max_rel_err'] for r in rows):.1e}")
        table.append(cells)
    widths = [max(len(col), *(len(t[i]) for t in table)) for i, col in enumerate(cols)]
    fmt = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    lines += [fmt(cols)] + [fmt(t) for t in table]
    if skipped:
        lines.append(f"not measured: {', '.join(skipped)} (their MLP is TP/ZeRO-sharded and has no chunked mode)")
    return "\n".join(lines)


def write_results(out_dir: str, rows: list[dict], meta: dict) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    files = []
    p = os.path.join(out_dir, "playground.json")
    with open(p, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2, default=str)
    files.append(p)
    p = os.path.join(out_dir, "playground.csv")
    keys = [k for k in rows[0] if k != "comm_by_kind"] if rows else []
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    files.append(p)
    return files


def _labels_overlap(fig, axes) -> list[tuple[str, str]]:
    """Pairs of tick labels (x and y) that overlap once drawn (used by the tests and as a guard)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    bad = []
    for ax in axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [(t.get_text(), t.get_window_extent(r)) for t in labels if t.get_text() and t.get_visible()]
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    if boxes[i][1].overlaps(boxes[j][1]):
                        bad.append((boxes[i][0], boxes[j][0]))
    return bad


def comm_figure(rows: list[dict], curves: dict, rc):
    """Closed-form communication vs sequence length (a line per strategy, its own colour, marker and
    line style; lines that coincide, e.g. ring and zigzag, stay visible by style) and the measured
    value at the run's length (the same colour and marker, large and hollow)."""
    import matplotlib.pyplot as plt

    from ..costmodel.plot_style import strategy_style

    fig, ax = plt.subplots(figsize=(9, 4.8))
    xs_all = sorted({x for xs, _ in curves.values() for x in xs})
    for s, (xs, ys) in curves.items():
        st = strategy_style(s)
        ax.plot(xs, [y / 2**20 for y in ys], label=s, **st)
    for r in rows:
        st = strategy_style(r["strategy"])
        ax.plot([rc.seq_len], [r["comm_per_layer_bytes"] / 2**20], linestyle="none", marker=st["marker"],
                markersize=13, markerfacecolor="none", markeredgecolor=st["color"], markeredgewidth=1.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if xs_all:
        ax.set_xticks(xs_all, [str(x) for x in xs_all])
        ax.xaxis.set_minor_locator(__import__("matplotlib").ticker.NullLocator())
    ax.set_xlabel("global sequence length (tokens)")
    ax.set_ylabel("MiB received per rank per layer (fwd+bwd)")
    ax.set_title("Communication vs sequence length (lines: closed form; hollow markers: measured)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig, [ax]


def time_memory_figure(rows: list[dict]):
    """Step time and memory per strategy as horizontal bars (names on the y axis: never overlapping),
    each strategy in its own colour."""
    import matplotlib.pyplot as plt

    from ..costmodel.plot_style import strategy_style

    names = [r["strategy"] for r in rows]
    colors = [strategy_style(n)["color"] for n in names]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.38 * max(len(rows), 2)))
    ypos = list(range(len(rows)))[::-1]
    a1.barh(ypos, [r["step_time_ms"] for r in rows], color=colors, edgecolor="black", linewidth=0.5)
    a1.set_xlabel("step time (ms, median)")
    mem_label = "peak MiB" if rows and rows[0]["peak_memory_bytes"] else "saved activations MiB"
    a2.barh(ypos, [(r["peak_memory_bytes"] or r["saved_activation_bytes"]) / 2**20 for r in rows], color=colors,
            edgecolor="black", linewidth=0.5)
    a2.set_xlabel(mem_label)
    for a in (a1, a2):
        a.set_yticks(ypos, names)
    fig.tight_layout()
    return fig, [a1, a2]


def plot_results(out_dir: str, rows: list[dict], curves: dict, rc) -> list[str]:
    """PNG plots (skipped with a message when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plots; pip install 'odysseus-kernels[bench]')")
        return []
    files = []
    figs = []
    if curves:
        figs.append(("comm_vs_seq_len.png", comm_figure(rows, curves, rc)))
    figs.append(("time_memory.png", time_memory_figure(rows)))
    for name, (fig, _axes) in figs:
        p = os.path.join(out_dir, name)
        fig.savefig(p, dpi=120)
        plt.close(fig)
        files.append(p)
    return files
