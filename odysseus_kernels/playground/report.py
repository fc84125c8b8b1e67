"""The playground's output: a progress line, the table, JSON/CSV files and PNG plots."""
from __future__ import annotations

import csv
import json
import os
import sys


def progress_line(done: int, total: int, what: str) -> None:
    width = 24
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what:<16}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


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


def format_blockwise(rows: list[dict], rc) -> str:
    """The blockwise-MLP memory table (first strategy, two sequence lengths, with and without)."""
    mem = "peak_memory_bytes" if rows and rows[0]["peak_memory_bytes"] is not None else "saved_activation_bytes"
    label = "peak MiB" if mem == "peak_memory_bytes" else "saved activations MiB"
    lines = [f"\nblockwise MLP (LWM/BPT memory mode), strategy {rc.strategies[0]}:",
             f"{'seq':>8}  {'mlp_chunk_size':>14}  {label:>22}  {'grad err':>8}"]
    for r in rows:
        lines.append(f"{r['seq_len']:>8}  {str(r['mlp_chunk_size'] or '-'):>14}  {r[mem] / 2**20:>22.3f}  "
                     f"{r['grad_max_rel_err']:>8.1e}")
    by = {(r["seq_len"], r["mlp_chunk_size"]): r[mem] for r in rows}
    s1, s2 = sorted({r["seq_len"] for r in rows})
    c = next(r["mlp_chunk_size"] for r in rows if r["mlp_chunk_size"])
    lines.append(f"growth from seq {s1} to {s2}: dense +{(by[(s2, None)] - by[(s1, None)]) / 2**20:.3f} MiB, "
                 f"blockwise +{(by[(s2, c)] - by[(s1, c)]) / 2**20:.3f} MiB")
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
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s, (xs, ys) in curves.items():
            ax.plot(xs, [y / 2**20 for y in ys], marker="o", label=s)
        for r in rows:
            ax.scatter([rc.seq_len], [r["comm_per_layer_bytes"] / 2**20], marker="x", color="black")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("global sequence length (tokens)")
        ax.set_ylabel("MiB received per rank per layer (fwd+bwd)")
        ax.set_title("Communication vs sequence length (lines: closed form; x: measured)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(out_dir, "comm_vs_seq_len.png")
        fig.savefig(p, dpi=120)
        plt.close(fig)
        files.append(p)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["strategy"] for r in rows]
    a1.bar(names, [r["step_time_ms"] for r in rows])
    a1.set_ylabel("step time (ms, median)")
    mem = [(r["peak_memory_bytes"] or r["saved_activation_bytes"]) / 2**20 for r in rows]
    a2.bar(names, mem)
    a2.set_ylabel("peak MiB" if rows and rows[0]["peak_memory_bytes"] else "saved activations MiB")
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    p = os.path.join(out_dir, "time_memory.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    files.append(p)
    return files
