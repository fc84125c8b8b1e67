"""Fill the README's GPU results section from the GPU kit's runs (issue #21): the newest in full, then
what only earlier runs measured.

    python scripts/render_results.py [--readme README.md] [--results benchmarks/results] [--check]

The section is the text between ``<!-- gpu-results:begin -->`` and ``<!-- gpu-results:end -->``. The
runs are the ``benchmarks/results/*/gpu_check.json`` (``scripts/gpu_check.sh`` writes them), ordered by
date; each result (a test group, a benchmark, a compile gate) is shown from the newest run that has it,
under that run's device, date and commit, so every number a reader sees says where it comes from. ``--check`` changes nothing and exits 1 if the README is not what this renders.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = "<!-- gpu-results:begin -->"
END = "<!-- gpu-results:end -->"
MAX_ROWS = 12
MAX_COLS = 13


def all_runs(results_root: str) -> list[tuple[str, dict]]:
    """(directory, gpu_check.json contents) of every run, the newest first."""
    runs = []
    for path in glob.glob(os.path.join(results_root, "*", "gpu_check.json")):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        runs.append((str(doc.get("date") or ""), os.path.basename(os.path.dirname(path)), os.path.dirname(path), doc))
    runs.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [(r[2], r[3]) for r in runs]


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "/").replace("\n", " ")


def _groups(rows: list[dict]) -> list[list[dict]]:
    """Rows split by the set of columns they fill (e.g. a benchmark's per-kernel and whole-ring rows), in
    order of first appearance: one table each, so no table is mostly empty cells."""
    groups: dict = {}
    for r in rows:
        cols = frozenset(k for k, v in r.items() if v is not None and v != "" and not isinstance(v, (dict, list)))
        groups.setdefault(cols, []).append(r)
    return list(groups.values())


def _table(rows: list[dict]) -> list[str]:
    cols = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))))[:MAX_COLS]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        out.append(f"\n({len(rows) - MAX_ROWS} more rows in the run's gpu_check.json)")
    return out


def _results(doc: dict) -> dict:
    """The run's results by name: test groups, benchmarks, compile gates (each only where it has numbers)."""
    out = {}
    for g, t in (doc.get("tests") or {}).items():
        if t.get("total", sum(t.get(k) or 0 for k in ("passed", "failed", "errors", "skipped"))):
            out[f"tests:{g}"] = t
    for name, b in (doc.get("benchmarks") or {}).items():
        if b.get("rows"):
            out[f"bench:{name}"] = b
    for name, g in (doc.get("compile_gate") or {}).items():
        if isinstance(g, dict) and g.get("summary"):
            out[f"gate:{name}"] = g
    return out


def _run_lines(run_dir: str, doc: dict, repo_root: str, results: dict, newest: bool) -> list[str]:
    rel = os.path.relpath(run_dir, repo_root).replace(os.sep, "/")
    v = doc.get("versions") or {}
    commit = (doc.get("commit") or "unknown")[:12]
    lead = "Measured on" if newest else "From an earlier run (what the newer runs above did not measure again): measured on"
    lines = [f"{lead} **{doc.get('device') or 'unknown device'}**, {doc.get('date')}, commit `{commit}` "
             f"(torch {v.get('torch')}, Triton {v.get('triton')}, CUDA {v.get('cuda')}). "
             f"Everything: [{rel}/SUMMARY.md]({rel}/SUMMARY.md).", ""]
    parts = doc.get("parts") or []
    bad = [f"{p['name']} ({p['status']})" for p in parts if p.get("status") != "ok"]
    lines.append(f"Kit: {len(parts) - len(bad)} of {len(parts)} parts ok in {doc.get('wall_s', 0):.0f} s"
                 + (f"; not ok: {', '.join(bad)}." if bad else "."))
    tests = {k[6:]: t for k, t in results.items() if k.startswith("tests:")}
    if tests:
        lines += [""] + _table([{"tests": g, **{k: t.get(k) for k in ("passed", "failed", "errors", "skipped")}}
                                for g, t in tests.items()])
    for key, b in results.items():
        if key.startswith("bench:"):
            lines += ["", f"**{key[6:]}** (medians in ms; ratios against the baseline of the same run)", ""]
            for i, rows in enumerate(_groups(b["rows"])):
                lines += ([""] if i else []) + _table(rows)
    for key, g in results.items():
        if key.startswith("gate:"):
            lines += ["", f"**Compile gate** (Triton {(g.get('meta') or {}).get('triton')}, "
                      f"{g.get('violations')} violating compilations)", ""]
            lines += _table([{k: s.get(k) for k in ("family", "arch", "cases", "max_shared", "max_regs", "spilling",
                                                    "wgmma", "violations")} for s in g["summary"]])
    return lines


def render(results_root: str, repo_root: str = ROOT) -> str:
    """The section's text (without the markers): the newest run in full, then, from each earlier run, the
    results (test groups, benchmarks, gates) no newer run has (a run of some parts only, ``--only``, keeps
    the rest of the picture)."""
    runs = all_runs(results_root)
    if not runs:
        return ("No GPU results yet. On a machine with a GPU, `bash scripts/gpu_check.sh` writes them to "
                "`benchmarks/results/<date>-<device>/` and `python scripts/render_results.py` fills this section.")
    lines = [f"<!-- generated by scripts/render_results.py from {len(runs)} run(s) under "
             f"{os.path.relpath(results_root, repo_root).replace(os.sep, '/')}/*/gpu_check.json; do not edit by hand -->"]
    seen: set = set()
    for i, (run_dir, doc) in enumerate(runs):
        results = {k: v for k, v in _results(doc).items() if k not in seen}
        if i and not results:
            continue
        seen |= set(results)
        lines += ([""] if i else []) + _run_lines(run_dir, doc, repo_root, results, newest=not i)
    return "\n".join(lines)


def fill(text: str, body: str) -> str:
    """``text`` with the section between the markers replaced by ``body``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the README needs exactly one {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--check", action="store_true", help="exit 1 if the README section is not up to date")
    a = p.parse_args(argv)
    with open(a.readme) as f:
        text = f.read()
    try:
        new = fill(text, render(a.results, os.path.dirname(os.path.abspath(a.readme))))
    except ValueError as e:
        print(f"render_results: {a.readme}: {e}", file=sys.stderr)
        return 2
    if a.check:
        if new != text:
            print(f"render_results: {a.readme}'s GPU results section is out of date; run python scripts/render_results.py",
                  file=sys.stderr)
            return 1
        print("render_results: up to date")
        return 0
    if new != text:
        with open(a.readme, "w") as f:
            f.write(new)
        print(f"render_results: updated {a.readme}")
    else:
        print("render_results: already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
