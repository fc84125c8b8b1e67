#!/usr/bin/env bash
# Development entry point. Needs only python3 (>= 3.10) on the machine.
#   bash scripts/dev.sh test  [pytest args]   set up .venv if needed, run the compile gate under both
#                                             Triton versions, the GPU kit's dry run, then the test suite
#   bash scripts/dev.sh gate  [aot args]      set up .venv if needed, run only the compile gate (both Tritons)
#   bash scripts/dev.sh demo  [playground args]  set up .venv if needed, run the playground
#   bash scripts/dev.sh setup                 only set up / refresh .venv (and .venv/triton-3.6.0)
#   bash scripts/dev.sh gpu-stack [pytest args]  the test suite on CPU under the GPU machine's torch and Triton
#                                             (torch 2.11.0 from PyPI, about 3 GB once; not part of CI)
# Setup is idempotent: it reinstalls only when requirements-dev.txt, pyproject.toml, setup.py or
# csrc/ changed since the last successful setup.
# The compile gate (python -m odysseus_kernels.kernels.aot, issue #14) compiles every Triton kernel at
# every launch config its table can pick for sm_90 and sm_80, without a GPU, under the Triton the
# pinned torch brings and under Triton $TRITON_B (the GPU machine's; installed --no-deps into
# .venv/triton-$TRITON_B and put first on PYTHONPATH). Results: $GATE_OUT/compile_gate-triton<v>.{json,md}.
# Environment: ODYSSEUS_GATE=0 skips the gate (local runs; CI never sets it), GATE_JOBS (default 2),
# GATE_OUT (default benchmarks/results/compile_gate), GATE_CACHE (default .venv/gate-cache).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TRITON_B=3.6.0
GATE_OUT=${GATE_OUT:-benchmarks/results/compile_gate}
GATE_CACHE=${GATE_CACHE:-$VENV/gate-cache}

# sha256 of stdin (the set-up stamps)
sha256() {
  "$PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "dev.sh: creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.odysseus-setup-stamp"
  local want
  want=$(cat requirements-dev.txt pyproject.toml setup.py $(find csrc -type f 2>/dev/null | sort) 2>/dev/null | sha256)
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

# The second Triton for the compile gate, beside the same torch: pip --no-deps --target (once).
setup_triton_b() {
  local dir="$VENV/triton-$TRITON_B"
  if [ -f "$dir/triton/__init__.py" ] && grep -q "__version__ = '$TRITON_B'" "$dir/triton/__init__.py"; then
    return 0
  fi
  echo "dev.sh: installing triton==$TRITON_B (--no-deps) into $dir for the compile gate"
  rm -rf "$dir.tmp"
  "$VENV/bin/python" -m pip install -q --no-deps --target "$dir.tmp" "triton==$TRITON_B"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
}

# The compile gate under both Tritons (both always run); returns 1 if either fails.
gate() {
  local rc=0 pp
  for which in venv "$TRITON_B"; do
    pp=${PYTHONPATH:-}
    [ "$which" = venv ] || pp="$VENV/triton-$TRITON_B${pp:+:$pp}"
    echo "dev.sh: compile gate, Triton $( PYTHONPATH="$pp" "$VENV/bin/python" -c 'import triton; print(triton.__version__)')"
    # env -u: the gate needs the real compiler (it would re-execute itself without the interpreter anyway)
    env -u TRITON_INTERPRET PYTHONPATH="$pp" "$VENV/bin/python" -m odysseus_kernels.kernels.aot \
      --out "$GATE_OUT" --jobs "${GATE_JOBS:-2}" --cache-dir "$GATE_CACHE/$which" --quiet "$@" || rc=1
  done
  return $rc
}

# The GPU machine's stack (torch $STACK_TORCH and the Triton it pins, 3.6.0) on CPU, before spending GPU
# time: its own venv ($VENV/gpu-stack) and its own copy of the working tree ($VENV/gpu-stack/src: the
# extension is built in place there exactly as the GPU kit builds it, which in the checkout would replace
# .venv's build). numpy < 2.4: Triton 3.6's interpreter converts 1-element arrays with int(), which
# NumPy 2.4 refuses (Triton 3.8 fixed it); setuptools < 82: torch 2.11's own requirement.
STACK_TORCH=2.11.0
STACK_PINS="torch==$STACK_TORCH numpy<2.4 setuptools<82"
gpu_stack() {
  mkdir -p "$VENV"
  local venv src stamp
  venv="$(cd "$VENV" && pwd)/gpu-stack"  # absolute: used from inside the copy too
  src="$venv/src"
  stamp="$venv/.stamp"
  local want
  want="$STACK_PINS $(sha256 < requirements-dev.txt)"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "dev.sh: installing torch==$STACK_TORCH (the GPU machine's) into $venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # everything else requirements-dev.txt names, beside that torch and the pins (no other torch may come in)
    grep -v -E '^torch([=<> ]|$)' requirements-dev.txt > "$venv/requirements.txt"
    # shellcheck disable=SC2086 # the pins are separate words
    "$venv/bin/python" -m pip install -q -r "$venv/requirements.txt" $STACK_PINS pytest-xdist
    echo "$want" > "$stamp"
  fi
  # a fresh copy of the working tree (tracked and untracked, not ignored); the build folder is kept, so
  # only the extension's changed sources are compiled again
  rm -rf "$venv/build.keep"
  [ -d "$src/build" ] && mv "$src/build" "$venv/build.keep"
  rm -rf "$src"
  mkdir -p "$src"
  git ls-files -z -c -o --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$src"
  [ -d "$venv/build.keep" ] && mv "$venv/build.keep" "$src/build"
  echo "dev.sh: $( "$venv/bin/python" -c 'import torch, triton, numpy; print(f"torch {torch.__version__}, Triton {triton.__version__}, numpy {numpy.__version__}")'), in $src"
  (cd "$src" && "$venv/bin/python" scripts/gpu_check.py --build > "$venv/build.log" 2>&1) || {
    echo "dev.sh: building the extension under torch $STACK_TORCH failed; the end of $venv/build.log:" >&2
    tail -n 60 "$venv/build.log" >&2
    exit 1
  }
  local rc=0
  (cd "$src" && PYTHONPATH="$src" "$venv/bin/python" scripts/gpu_check.py --dry-run > "$venv/dry-run.log" 2>&1) || {
    rc=1
    tail -n 20 "$venv/dry-run.log" >&2
  }
  (cd "$src" && PYTHONPATH="$src" "$venv/bin/python" -m pytest -p no:cacheprovider "$@") || rc=$?
  return $rc
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup; setup_triton_b ;;
  gate)
    setup
    setup_triton_b
    gate "$@" ;;
  test)
    setup
    setup_triton_b
    # tests/test_launch_direct.py checks the direct launches under this Triton too
    export ODYSSEUS_TRITON_B="$VENV/triton-$TRITON_B"
    rc=0
    if [ "${ODYSSEUS_GATE:-1}" != 0 ]; then
      t0=$SECONDS
      if ! gate; then
        rc=1
        echo "dev.sh: the compile gate FAILED (see above and $GATE_OUT); running the tests anyway" >&2
      fi
      export ODYSSEUS_GATE_RESULTS="$GATE_OUT"  # tests/test_compile_gate.py checks these, compiles nothing
      echo "dev.sh: compile gate took $((SECONDS - t0)) s"
    fi
    # The GPU kit's dry run (no GPU needed): every part's scripts, modules and tests exist and import.
    PYTHON="$VENV/bin/python" bash scripts/gpu_check.sh --dry-run || rc=1
    # The README's GPU numbers are rendered from the newest benchmarks/results/ run (never typed by hand).
    "$VENV/bin/python" scripts/render_results.py --check || rc=1
    "$VENV/bin/python" -m pytest "$@" || rc=$?
    exit $rc ;;
  gpu-stack) gpu_stack "$@" ;;
  demo)
    setup
    exec "$VENV/bin/python" -m odysseus_kernels.playground "$@" ;;
  *) echo "usage: bash scripts/dev.sh {test|gate|demo|setup|gpu-stack} [args]" >&2; exit 2 ;;
esac
