#!/usr/bin/env bash
# Development entry point. Needs only python3 (>= 3.10) on the machine.
#   bash scripts/dev.sh test  [pytest args]   set up .venv if needed, run the whole test suite
#   bash scripts/dev.sh demo  [playground args]  set up .venv if needed, run the playground
#   bash scripts/dev.sh setup                 only set up / refresh .venv
# Setup is idempotent: it reinstalls only when requirements-dev.txt, pyproject.toml, setup.py or
# csrc/ changed since the last successful setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "dev.sh: creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.odysseus-setup-stamp"
  local want
  want=$(cat requirements-dev.txt pyproject.toml setup.py $(find csrc -type f 2>/dev/null | sort) 2>/dev/null | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c 'import odysseus_kernels' 2>/dev/null; then
    return 0
  fi
  echo "dev.sh: installing the dev environment into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned in requirements-dev.txt (a local CUDA 13.0 build); never let pip pick another.
  "$VENV/bin/python" -m pip install -q -r requirements-dev.txt
  # --no-build-isolation: build the extension against the torch above, never fetch another torch.
  # -v: the extension build's own output reaches the log, so CI shows each object being compiled
  # (nvcc for csrc/cuda/*.cu) and every compiler diagnostic; shown condensed, the full log is kept.
  local log="$VENV/.odysseus-build.log"
  if ! "$VENV/bin/python" -m pip install -v --no-build-isolation --no-deps -e . 2>&1 | tee "$log" | awk '
      /odysseus-kernels:|error|warning:|Successfully installed/ { print; next }
      /^ *\[[0-9]+\/[0-9]+\] / {  # ninja: "[k/n] <compiler> ... -c <source> ... -gencode=...code=sm_XY"
        src = ""; archs = ""
        for (i = 2; i <= NF; i++) {
          if ($i == "-c" && $(i + 1) !~ /^-/) src = $(i + 1)
          if ($i ~ /^-gencode=/) { a = $i; sub(/.*code=/, "", a); archs = archs " " a }
        }
        sub(/.*\/csrc\//, "csrc/", src); n = split($2, path, "/")
        print "  compiled " $1 " " path[n] " " src (archs != "" ? " for" archs : "")
      }'; then
    echo "dev.sh: installing the package failed; the end of $log:" >&2
    tail -n 60 "$log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup ;;
  test)
    setup
    exec "$VENV/bin/python" -m pytest "$@" ;;
  demo)
    setup
    exec "$VENV/bin/python" -m odysseus_kernels.playground "$@" ;;
  *) echo "usage: bash scripts/dev.sh {test|demo|setup} [args]" >&2; exit 2 ;;
esac
