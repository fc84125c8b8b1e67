#!/usr/bin/env bash
# The GPU kit (issue #21): proves and measures everything on one GPU in under 10 minutes.
#   bash scripts/gpu_check.sh [OUTDIR] [--commit SHA] [--dry-run]
# Uses the machine's python3 and torch as they are (PYTHON=... to pick another interpreter); never
# installs from a registry. Results: OUTDIR (default benchmarks/results/<date>-<device>/):
# gpu_check.json, SUMMARY.md, pytest.log, parts.log, compile_gate-triton<v>.{json,md}.
# Then: python3 scripts/render_results.py  (fills the README's results section from the newest run).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
