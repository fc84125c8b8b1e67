"""The GPU kit (issue #21): one command that proves and measures everything on a single GPU in < 10 min.

    bash scripts/gpu_check.sh [OUTDIR] [--commit SHA] [--dry-run]

Runs parts one after the other, each a subprocess with its own time budget (a part over budget is
killed with its process group and recorded as ``timeout``; a failing part is recorded as ``failed``;
the rest still runs; parts are also cut to what is left of the total budget). Uses the machine's
``python3`` and torch as they are and never installs anything from a registry. Writes to OUTDIR
(default ``benchmarks/results/<date>-<device>/``): ``gpu_check.json`` (every number), ``SUMMARY.md``,
``pytest.log`` (every pytest part's output), ``parts.log`` (every other part's output) and the compile
gate's ``compile_gate-triton<v>.json``/``.md``: at most 8 files, each cut below 16 MB.

``--dry-run`` (no GPU needed; CI runs it) lists the parts, budgets and commands and checks that every
script, module and test file they use exists and imports, and that every benchmark takes ``--quick``
and ``--out``; it exits 1 if one does not.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_BUDGET_S = 570.0  # the whole kit, start to end (< 10 minutes: one device call)
MAX_FILE_BYTES = 15 * 1024 * 1024
MAX_FILES = 8
PY = sys.executable

# The kernel tests whose Triton cases run on the GPU, compiled (their tensors go to the device when
# TRITON_INTERPRET is unset: tests/triton_device.py), with the cuda-marked ones left to tests_cuda. The
# CPU-only multi-rank suites (gloo, Triton in the interpreter) are CI's: on the GPU machine they would
# only repeat it.
KERNEL_TESTS = ["tests/test_attention_block.py", "tests/test_linear_attention_kernels.py"]
BENCHMARKS = ["attention_block", "linear_attention", "tp_gemm"]


@dataclass
class Part:
    """One step of the kit: ``cmd`` run from the repository root under ``budget_s`` seconds.

    kind: ``"pytest"`` (junit XML parsed into counts; output to pytest.log), ``"bench"`` (every JSON
    its ``--out`` dir gets is collected), ``"json"`` (the command writes one JSON document to
    ``{json}``), or ``"plain"``. ``{pdir}`` (the part's scratch dir), ``{out}``, ``{json}``,
    ``{junit}`` in ``cmd`` are filled in.
    ``uses``: files and modules the dry run checks (``"file:path"``, ``"module:name"``, ``"bench:path"``).
    """

    name: str
    budget_s: float
    cmd: list
    kind: str = "plain"
    env: dict = field(default_factory=dict)
    uses: list = field(default_factory=list)
    doc: str = ""


def _py(*args):
    return [PY, *args]


def _xdist(workers: int) -> list[str]:
    """pytest-xdist arguments when it is installed (the GPU machine has it): the parts' time goes into
    compiling Triton kernels, which parallel workers share out; none without it."""
    import importlib.util

    return ["-n", str(workers), "--dist", "load"] if workers > 1 and importlib.util.find_spec("xdist") else []


def default_parts(jobs: int | None = None) -> list[Part]:
    """The parts, most telling first (a run cut short loses the least): the cuda tests, the host
    overhead, the benchmarks, the kernel tests compiled for the GPU, a playground run, the gate."""
    jobs = jobs or max(2, min(12, (os.cpu_count() or 4) - 2))
    workers = max(1, min(6, (os.cpu_count() or 2) // 2))
    bench = [Part(f"bench_{b}", 20 if b == "tp_gemm" else 30, _py(f"benchmarks/{b}.py", "--quick", "--out", "{pdir}"), "bench",
                  uses=[f"bench:benchmarks/{b}.py"], doc=f"benchmarks/{b}.py at its --quick size set")
             for b in BENCHMARKS]
    return [
        Part("build", 30, _py("scripts/gpu_check.py", "--build"), env={"MAX_JOBS": str(os.cpu_count() or 8)},
             uses=["file:setup.py", "file:_build/odysseus_backend.py"], doc="build the extension in place with this python3/torch (SASS for the GPU "
             "found plus setup.py's 8.0;9.0+PTX)"),
        Part("env", 10, _py("scripts/gpu_check.py", "--probe-env", "{json}"), "json", uses=["file:scripts/gpu_check.py"],
             doc="versions, device, clocks (nvidia-smi)"),
        Part("gloo_cuda_probe", 15, _py("scripts/gpu_check.py", "--probe-gloo", "{json}"), "json",
             doc="which gloo collectives / P2P move CUDA tensors (2 ranks sharing the GPU)"),
        Part("tests_cuda", 195, _py("-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *_xdist(workers),
                                    "tests", "--junitxml={junit}"), "pytest", uses=["file:tests/conftest.py"],
             doc="every cuda-marked test (pytest-xdist workers when installed)"),
        Part("host_overhead", 55, _py("benchmarks/host_overhead.py", "--quick", "--no-stub", "--out", "{pdir}"), "bench",
             uses=["bench:benchmarks/host_overhead.py"], doc="ring driver host overhead on CPU and GPU"),
        *bench,
        Part("tune_attention", 55, _py("benchmarks/attention_tune.py", "--quick", "--head-dims", "64", "--out", "{pdir}"), "bench",
             uses=["bench:benchmarks/attention_tune.py"], doc="launch-config sweep of the attention kernels "
             "(16-bit, head dim 64; 128 was swept in the 2026-12-04b run; every candidate checked against float64 first)"),
        Part("tests_kernels", 25, _py("-m", "pytest", "-m", "not cuda", "-q", "-p", "no:cacheprovider",
                                      *_xdist(workers), *KERNEL_TESTS, "--junitxml={junit}"), "pytest",
             uses=[f"file:{t}" for t in KERNEL_TESTS],
             doc="the kernel tests' small odd-shaped cases, Triton compiled for the GPU (fp32/fp16)"),
        Part("playground", 80, _py("scripts/gpu_check.py", "--playground", "{pdir}", "{json}"), "json",
             uses=["module:odysseus_kernels.playground"], doc="a short playground run on the GPU (its output echoed line by line with the seconds since its start, "
             "so that a run stopped by its budget shows where the time went)"),
        Part("compile_gate", 25, _py("-m", "odysseus_kernels.kernels.aot", "--out", "{out}", "--arch", "90", "--families",
                                      "gemm,linear_attention", "--jobs", str(jobs), "--timeout", "22", "--quiet"), "plain", env={"TRITON_INTERPRET": None},
             uses=["module:odysseus_kernels.kernels.aot"], doc="the ahead-of-time compile gate for sm_90 under the machine's "
             "Triton, the GEMM and linear-attention families (the attention family's ~1000 cases take minutes: "
             "`bash scripts/dev.sh gpu-stack` compiles them on CPU under the same Triton 3.6)"),
    ]


# --------------------------------------------------------------------------- running parts

def _fill(cmd, **kw):
    """``cmd`` with the placeholders ``{pdir}``, ``{out}``, ``{json}``, ``{junit}`` filled in (other braces stay)."""
    out = []
    for c in cmd:
        c = str(c)
        for k, v in kw.items():
            c = c.replace("{" + k + "}", str(v))
        out.append(c)
    return out


def parse_junit(path: str) -> dict:
    """Counts of a pytest junit XML and the first failure's text."""
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "total": 0, "first_failure": None, "by_file": {}}
    if not os.path.exists(path):
        return res
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        if not case.get("name"):  # the stub pytest leaves for a test interrupted by the budget's SIGINT
            res["interrupted"] = res.get("interrupted", 0) + 1
            continue
        res["total"] += 1
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            status = "failed" if bad.tag == "failure" else "errors"
            if res["first_failure"] is None:
                text = (bad.get("message") or "") + "\n" + (bad.text or "")
                res["first_failure"] = f"{case.get('classname')}::{case.get('name')}\n{text.strip()[:4000]}"
        elif case.find("skipped") is not None:
            status = "skipped"
        else:
            status = "passed"
        res[status] += 1
        # per test module (a run cut by its budget says which modules' tests finished)
        per = res["by_file"].setdefault(case.get("classname") or "?", {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
        per[status] += 1
    return res


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_part(part: Part, *, out_dir: str, tmp: str, budget_s: float, pytest_log, parts_log) -> dict:
    """Run one part under ``budget_s``; never raises. Returns its record (status ok/failed/timeout)."""
    os.makedirs(tmp, exist_ok=True)
    jpath = os.path.join(tmp, f"{part.name}.json")
    junit = os.path.join(tmp, f"{part.name}.junit.xml")
    pdir = os.path.join(tmp, part.name)
    cmd = _fill(part.cmd, pdir=pdir, out=out_dir, json=jpath, junit=junit)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"  # a part stopped over budget still shows how far it got
    for k, v in part.env.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    log = pytest_log if part.kind == "pytest" else parts_log
    rec = {"name": part.name, "budget_s": round(budget_s, 1), "cmd": shlex.join(cmd), "status": None, "rc": None,
           "wall_s": None, "error": None}
    header = f"\n===== {part.name} (budget {budget_s:.0f} s): {shlex.join(cmd)}\n"
    log.write(header)
    log.flush()
    print(header.strip(), flush=True)
    t0 = time.monotonic()
    try:
        # SIGINT back to its default in the child (a shell that starts jobs in the background ignores it,
        # and an ignored signal stays ignored through exec), so that Python there turns it into
        # KeyboardInterrupt
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True, errors="replace",
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    except OSError as e:
        rec.update(status="failed", error=f"could not start: {e}", wall_s=0.0)
        log.write(rec["error"] + "\n")
        return rec
    out_text = []

    import threading

    def pump():
        for line in proc.stdout:
            out_text.append(line)
            log.write(line)
        log.flush()

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    # pytest is interrupted (SIGINT) a few seconds before the budget ends, so that it still writes the
    # junit report of the tests it ran; everything else, and a pytest that does not stop, is killed
    grace = min(8.0, budget_s / 4) if part.kind == "pytest" else 0.0
    try:
        proc.wait(timeout=budget_s - grace)
        rec["status"] = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        rec["status"] = "timeout"
        if grace:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=grace)
            except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
                pass
        _kill_group(proc)
        proc.wait()
    th.join(timeout=10)
    rec["rc"] = proc.returncode
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    tail = "".join(out_text)[-3000:]
    if rec["status"] == "timeout":
        rec["error"] = f"over its budget of {budget_s:.0f} s: stopped\n{tail[-1500:]}"
        log.write(f"===== {part.name}: TIMEOUT after {budget_s:.0f} s (stopped)\n")
    elif rec["status"] == "failed":
        rec["error"] = tail
    if part.kind == "pytest":
        rec["tests"] = parse_junit(junit)
    elif part.kind == "json" and os.path.exists(jpath):
        try:
            with open(jpath) as f:
                rec["data"] = json.load(f)
        except (OSError, ValueError) as e:
            rec["data_error"] = str(e)
    elif part.kind == "bench":
        rec["benchmarks"] = {}
        for path in sorted(glob.glob(os.path.join(pdir, "*.json"))):
            try:
                with open(path) as f:
                    doc = json.load(f)
                rec["benchmarks"][os.path.basename(path)[:-5]] = {"meta": doc.get("meta"), "rows": doc.get("results")}
            except (OSError, ValueError) as e:
                rec["benchmarks"][os.path.basename(path)] = {"error": str(e)}
    print(f"===== {part.name}: {rec['status']} in {rec['wall_s']} s", flush=True)
    return rec


def run_parts(parts: list[Part], out_dir: str, *, total_budget_s: float = TOTAL_BUDGET_S, tmp: str | None = None) -> list[dict]:
    """Every part in order, fail-soft, each under min(its budget, what is left of the total)."""
    tmp = tmp or tempfile.mkdtemp(prefix="gpu_check-")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.monotonic()
    records = []
    with open(os.path.join(out_dir, "pytest.log"), "a") as pytest_log, \
            open(os.path.join(out_dir, "parts.log"), "a") as parts_log:
        for part in parts:
            left = total_budget_s - (time.monotonic() - t0)
            if left < 5:
                records.append({"name": part.name, "budget_s": part.budget_s, "cmd": shlex.join(part.cmd),
                                "status": "skipped", "rc": None, "wall_s": 0.0,
                                "error": f"no time left of the total budget of {total_budget_s:.0f} s"})
                continue
            records.append(run_part(part, out_dir=out_dir, tmp=tmp, budget_s=min(part.budget_s, left),
                                    pytest_log=pytest_log, parts_log=parts_log))
    return records


# --------------------------------------------------------------------------- probes (run as parts)

def probe_env() -> dict:
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    from importlib import metadata as md

    info["packages"] = {}
    for dist in ("numpy", "setuptools", "ninja", "pytest", "pytest-xdist"):
        try:
            info["packages"][dist] = md.version(dist)
        except md.PackageNotFoundError:
            info["packages"][dist] = None
    try:
        info["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        info["nvcc"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                          "memory_gb": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    else:
        info["device"] = None
    try:
        q = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,"
             "temperature.gpu,memory.used,memory.total,persistence_mode")
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        info["nvidia_smi"] = [dict(zip(q.split(","), (v.strip() for v in line.split(",")))) for line in out]
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def _gloo_rank(rank, world, init, out):
    import torch
    import torch.distributed as dist

    from datetime import timedelta

    # a short timeout: a rank whose attempt raised leaves its peer waiting in that collective
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=4))
    dev = torch.device("cuda", 0)
    res = {}

    def attempt(name, fn, expect):
        try:
            got = fn()
            torch.cuda.synchronize()
            res[name] = "ok" if torch.equal(got.cpu(), expect) else "wrong values"
        except Exception as e:  # noqa: BLE001
            res[name] = f"{type(e).__name__}: {str(e)[:200]}"
        if rank == 0:  # after every attempt (written whole, then renamed): a later crash loses nothing before it
            with open(out + ".tmp", "w") as f:
                json.dump(res, f)
            os.replace(out + ".tmp", out)

    x = torch.full((4,), float(rank + 1), device=dev)

    def all_reduce():
        y = x.clone()
        dist.all_reduce(y)
        return y

    def all_gather():
        y = torch.empty(4 * world, device=dev)
        dist.all_gather_into_tensor(y, x)
        return y

    def reduce_scatter():
        y = torch.empty(4, device=dev)
        dist.reduce_scatter_tensor(y, x.repeat(world))
        return y

    def all_to_all():
        y = torch.empty(4 * world, device=dev)
        dist.all_to_all_single(y, x.repeat(world))
        return y

    def p2p():
        y = torch.empty(4, device=dev)
        ops = [dist.P2POp(dist.isend, x, (rank + 1) % world), dist.P2POp(dist.irecv, y, (rank - 1) % world)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        return y

    total = float(sum(range(1, world + 1)))
    attempt("all_reduce", all_reduce, torch.full((4,), total))
    attempt("all_gather", all_gather, torch.cat([torch.full((4,), float(r + 1)) for r in range(world)]))
    attempt("reduce_scatter", reduce_scatter, torch.full((4,), total))
    attempt("all_to_all", all_to_all, torch.cat([torch.full((4,), float(r + 1)) for r in range(world)]))
    attempt("p2p", p2p, torch.full((4,), float((rank - 1) % world + 1)))
    dist.destroy_process_group()


def _rank_death(procs) -> str | None:
    """How the first rank that failed ended, or None while none has."""
    for i, proc in enumerate(procs):
        code = proc.exitcode
        if code not in (None, 0):
            return f"rank {i} exited with code {code}" if code > 0 else f"rank {i} was killed by signal {-code}"
    return None


def probe_gloo(world: int = 2, deadline_s: float = 16.0, rank_fn=None, grace_s: float = 6.0) -> dict:
    """Which gloo collectives move CUDA tensors (``rank_fn(rank, world, init, out)`` runs each rank; tests
    pass their own): every answer a rank 0 wrote before a crash, or before ``deadline_s`` stopped a
    rank that was still waiting, is kept; what was not reached says so.

    When a rank dies the others get ``grace_s`` more (longer than the ranks' 4 s gloo timeout) to
    finish on their own: the survivor writes each answer after its collective returns, so stopping it
    the moment its peer exits would lose an answer it already had (torch's ``ProcessContext.join``
    terminates the survivors at once, so the ranks are polled here instead)."""
    import torch
    import torch.multiprocessing as mp

    if rank_fn is None and not torch.cuda.is_available():
        return {"error": "no CUDA device"}
    tmp = tempfile.mkdtemp(prefix="gloo_probe-")
    init, out = os.path.join(tmp, "rdzv"), os.path.join(tmp, "res.json")
    crash = None
    ctx = mp.start_processes(rank_fn or _gloo_rank, args=(world, init, out), nprocs=world, start_method="spawn", join=False)
    deadline = time.monotonic() + deadline_s
    while any(proc.is_alive() for proc in ctx.processes):
        if crash is None:
            crash = _rank_death(ctx.processes)  # a rank died, e.g. gloo handed a CUDA pointer to its socket
            if crash is not None:
                deadline = min(deadline, time.monotonic() + grace_s)
        if time.monotonic() > deadline:
            if crash is None:
                crash = f"stopped after {deadline_s:.0f} s (a rank was still waiting)"
            break
        time.sleep(0.2)
    if crash is None:
        crash = _rank_death(ctx.processes)
    for proc in ctx.processes:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    ops = {}
    try:
        with open(out) as f:
            ops = json.load(f)
    except (OSError, ValueError):
        pass
    for name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p"):
        ops.setdefault(name, f"not reached: {crash}" if crash else "not reached")
    return {"world": world, "ops": ops, **({"crash": crash} if crash else {})}


def playground(out_dir: str) -> dict:
    """A short playground run on the GPU: 2 gloo ranks sharing it when gloo moves CUDA tensors in its
    collectives (all-reduce, all-gather, reduce-scatter, all-to-all; point to point the package goes
    through host memory, ``comm.p2p``), else 1 rank."""
    res = {}
    # the kit's gloo_cuda_probe part wrote its answer beside this part's folder; without it, one rank
    probe = os.path.join(os.path.dirname(os.path.abspath(out_dir)), "gloo_cuda_probe.json")
    try:
        with open(probe) as f:
            ops = json.load(f)["ops"]
        world = 2 if all(ops.get(k) == "ok" for k in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")) else 1
        res["gloo_ops"] = ops
    except (OSError, ValueError, KeyError) as e:
        world, res["gloo_probe_error"] = 1, f"no probe result ({type(e).__name__}): one rank"
    cmd = [PY, "-m", "odysseus_kernels.playground", "--device", "cuda", "--world-size", str(world), "--steps", "2",
           "--dtype", "bfloat16", "--out", out_dir]
    rc, text = tee(cmd)
    res.update(world=world, cmd=shlex.join(cmd), rc=rc, table=text[-6000:])
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        with open(path) as f:
            res[os.path.basename(path)] = json.load(f)
    if rc != 0:
        raise SystemExit(f"playground exited {rc}: {text[-2000:]}")
    return res


def tee(cmd: list) -> tuple[int, str]:
    """Run ``cmd`` (stdout and stderr together) and echo its output as it comes, each line (a progress
    bar's carriage returns as line ends) prefixed with the seconds since the start: a run stopped by its
    budget shows where its time went. Returns the exit status and the output."""
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out, pending, shown = [], b"", None  # shown: the unfinished line already echoed (a bar drawn, no line end)

    def echo(text):
        print(f"[{time.monotonic() - t0:6.1f} s] {text}", flush=True)

    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        pending += chunk.replace(b"\r", b"\n")
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            out.append(text)
            if text != shown:
                echo(text)
            shown = None
        if pending and pending.decode(errors="replace") != shown:
            shown = pending.decode(errors="replace")
            echo(shown)
    if pending:
        out.append(pending.decode(errors="replace"))
        if out[-1] != shown:
            echo(out[-1])
    return proc.wait(), "\n".join(out)


def build() -> int:
    """Build the extension in place with this python3/torch: setup.py's default arch list (sm_80, sm_90
    SASS + compute_90 PTX) plus the GPU's own arch when it is another one."""
    import torch

    env = dict(os.environ)
    if "TORCH_CUDA_ARCH_LIST" not in env and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        archs = ["8.0", "9.0+PTX"]
        if f"{major}.{minor}" not in ("8.0", "9.0"):
            archs.append(f"{major}.{minor}")
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    try:
        import setuptools

        st = setuptools.__version__
        tools = f"setuptools {st} (pyproject.toml needs >= 77)"
    except ImportError:
        st, tools = None, "no setuptools"
    import shutil

    tools += ", ninja " + ("found" if shutil.which("ninja") else "NOT found (a serial build)")
    print(f"gpu_check: building the extension for TORCH_CUDA_ARCH_LIST={env.get('TORCH_CUDA_ARCH_LIST', '(setup.py default)')}"
          f"; torch {torch.__version__} (CUDA {torch.version.cuda}), {tools}", flush=True)
    if st is not None and setuptools_too_old(st):
        return build_without_pyproject(env)
    return subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env).returncode


def setuptools_too_old(version: str) -> bool:
    """Whether this setuptools version is below what pyproject.toml needs: the in-tree build backend's
    own threshold and version parsing (``_build/odysseus_backend.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("odysseus_backend", os.path.join(ROOT, "_build", "odysseus_backend.py"))
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    return backend._version(version) < backend.MIN_SETUPTOOLS


def build_without_pyproject(env: dict, root: str = ROOT) -> int:
    """The extension built by a setuptools older than 77, which refuses pyproject.toml's SPDX license
    string before it builds anything (the GPU machine's setuptools is whatever its image holds, and
    nothing can be installed there): setup.py and csrc/ are copied to a folder without pyproject.toml
    (build_ext needs none of the package's metadata), built there in place, and the module is copied
    into ``root``/odysseus_kernels."""
    import shutil

    print("gpu_check: setuptools < 77: building from a copy of setup.py and csrc/ without pyproject.toml", flush=True)
    with tempfile.TemporaryDirectory(prefix="odysseus-build-") as tmp:
        shutil.copy2(os.path.join(root, "setup.py"), tmp)
        shutil.copytree(os.path.join(root, "csrc"), os.path.join(tmp, "csrc"))
        os.makedirs(os.path.join(tmp, "odysseus_kernels"))  # where build_ext --inplace puts the module
        rc = subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=tmp, env=env).returncode
        built = glob.glob(os.path.join(tmp, "odysseus_kernels", "_C*.so")) + glob.glob(
            os.path.join(tmp, "odysseus_kernels", "_C*.pyd"))
        if rc == 0 and not built:
            print("gpu_check: the build made no odysseus_kernels/_C module", flush=True)
            rc = 1
        if rc == 0:
            for f in built:
                shutil.copy2(f, os.path.join(root, "odysseus_kernels", os.path.basename(f)))
                print(f"gpu_check: built {os.path.join('odysseus_kernels', os.path.basename(f))}", flush=True)
    return rc


# --------------------------------------------------------------------------- dry run

def _check_uses(modules: list[str], scripts: list[str]) -> list[str]:
    """Import every module and run every script with ``--help`` in one interpreter; problems found."""
    import contextlib
    import io
    import runpy

    problems = []
    for mod in modules:
        try:
            __import__(mod)
        except BaseException as e:  # noqa: BLE001
            problems.append(f"import {mod} failed: {type(e).__name__}: {str(e)[:300]}")
    for path in scripts:
        buf = io.StringIO()
        argv, spath = sys.argv, list(sys.path)
        sys.argv, sys.path = [path, "--help"], [os.path.dirname(os.path.join(ROOT, path))] + sys.path
        try:
            with contextlib.redirect_stdout(buf):
                runpy.run_path(os.path.join(ROOT, path), run_name="__main__")
            problems.append(f"{path} --help did not exit")
        except SystemExit as e:
            if e.code not in (0, None):
                problems.append(f"{path} --help exited {e.code}")
        except BaseException as e:  # noqa: BLE001
            problems.append(f"{path} --help failed: {type(e).__name__}: {str(e)[:300]}")
        finally:
            sys.argv, sys.path = argv, spath
        for opt in ("--quick", "--out"):
            if opt not in buf.getvalue():
                problems.append(f"{path} has no {opt} option (use benchmarks/_common.add_run_args)")
    return problems


def dry_run(parts: list[Part]) -> int:
    """List the parts; check every script / module / test file they use. 0 if all are there."""
    problems, modules, scripts = [], [], []
    total = 0.0
    print(f"gpu_check dry run: {len(parts)} parts, total budget {TOTAL_BUDGET_S:.0f} s, python {PY}")
    for p in parts:
        total += p.budget_s
        shown = _fill(p.cmd, pdir="TMP/" + p.name, out="OUTDIR", json=f"TMP/{p.name}.json", junit=f"TMP/{p.name}.junit.xml")
        print(f"  {p.name:<24} {p.budget_s:>4.0f} s  {p.doc}\n      $ {shlex.join(shown)}")
        for use in p.uses:
            kind, what = use.split(":", 1)
            if kind in ("file", "bench") and not os.path.exists(os.path.join(ROOT, what)):
                problems.append(f"{p.name}: {what} does not exist")
            elif kind == "module":
                modules.append(what)
            elif kind == "file" and what.startswith("tests/") and what.endswith(".py"):
                modules.append(what[:-3].replace("/", "."))
            elif kind == "bench":
                scripts.append(what)
    # One interpreter (no TRITON_INTERPRET, as on the GPU) imports everything and asks every benchmark for --help.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([PY, os.path.abspath(__file__), "--check-uses", json.dumps({"modules": modules, "scripts": scripts})],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    try:
        problems += json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        problems.append(f"the import check crashed (rc {r.returncode}): {r.stderr[-500:]}")
    print(f"  sum of budgets {total:.0f} s (each part is also cut to what is left of {TOTAL_BUDGET_S:.0f} s)")
    if total > TOTAL_BUDGET_S:
        problems.append(f"budgets sum to {total:.0f} s, over the total of {TOTAL_BUDGET_S:.0f} s")
    for msg in problems:
        print(f"  PROBLEM: {msg}")
    print("gpu_check dry run: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


# --------------------------------------------------------------------------- results

def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "device"


def default_out_dir() -> str:
    try:
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        dev = "unknown"
    return os.path.join(ROOT, "benchmarks", "results", f"{time.strftime('%Y-%m-%d')}-{_slug(dev)}")


def _commit(arg: str | None) -> str | None:
    if arg:
        return arg
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def assemble(records: list[dict], *, commit: str | None, wall_s: float) -> dict:
    """The one JSON: device, date, commit, versions, parts, tests per group, benchmarks, gate, playground."""
    env = next((r.get("data") for r in records if r["name"] == "env"), None) or {}
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit,
           "device": (env.get("device") or {}).get("name") if env else None, "env": env,
           "versions": {k: env.get(k) for k in ("python", "torch", "triton", "cuda", "nvcc")},
           "total_budget_s": TOTAL_BUDGET_S, "wall_s": round(wall_s, 1),
           "parts": [{k: v for k, v in r.items() if k not in ("tests", "data", "benchmarks")} for r in records],
           "tests": {r["name"]: r["tests"] for r in records if "tests" in r},
           "benchmarks": {k: v for r in records for k, v in (r.get("benchmarks") or {}).items()},
           "gloo_cuda": next((r.get("data") for r in records if r["name"] == "gloo_cuda_probe"), None),
           "playground": next((r.get("data") for r in records if r["name"] == "playground"), None)}
    doc["compile_gate"] = None  # filled from OUTDIR's compile_gate-*.json by main()
    return doc


def _cell(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/").replace("\n", " ")


def md_table(rows: list[dict], cols: list[str] | None = None, limit: int = 40) -> list[str]:
    if not rows:
        return ["(no rows)"]
    cols = cols or list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (dict, list))))[:12]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows[:limit]]
    if len(rows) > limit:
        out.append(f"\n({len(rows) - limit} more rows in gpu_check.json)")
    return out


def render_summary(doc: dict) -> str:
    v = doc["versions"]
    lines = [f"# GPU check: {doc.get('device') or 'no GPU'}", "",
             f"Date {doc['date']}, commit `{doc.get('commit') or '?'}`; torch {v.get('torch')}, Triton {v.get('triton')}, "
             f"CUDA {v.get('cuda')} (nvcc: {v.get('nvcc')}), Python {v.get('python')}. "
             f"Wall time {doc['wall_s']:.0f} s of a {doc['total_budget_s']:.0f} s budget.", "", "## Parts", ""]
    lines += md_table([{"part": p["name"], "status": p["status"], "wall_s": p["wall_s"], "budget_s": p["budget_s"]}
                       for p in doc["parts"]])
    if doc["tests"]:
        lines += ["", "## Tests", ""]
        lines += md_table([{"group": g, **{k: t[k] for k in ("passed", "failed", "errors", "skipped", "total")}}
                           for g, t in doc["tests"].items()])
        for g, t in doc["tests"].items():
            if t.get("first_failure"):
                lines += ["", f"First failure in {g}:", "", "```", t["first_failure"][:1500], "```"]
    for name, b in doc["benchmarks"].items():
        lines += ["", f"## {name}", ""]
        lines += md_table(b.get("rows") or []) if "rows" in b else [f"error: {b.get('error')}"]
    if doc.get("gloo_cuda"):
        lines += ["", "## gloo with CUDA tensors", "", "```", json.dumps(doc["gloo_cuda"], indent=1)[:2000], "```"]
    bad = [p for p in doc["parts"] if p["status"] != "ok"]
    if bad:
        lines += ["", "## Parts that did not pass", ""]
        for p in bad:
            lines += [f"### {p['name']}: {p['status']}", "", "```", (p.get("error") or "")[-1500:], "```"]
    return "\n".join(lines) + "\n"


def _cap_files(out_dir: str) -> None:
    """At most MAX_FILES files, each below the size limit (logs keep their head and tail)."""
    for path in glob.glob(os.path.join(out_dir, "*")):
        if os.path.isfile(path) and os.path.getsize(path) > MAX_FILE_BYTES:
            with open(path, "rb") as f:
                data = f.read()
            note = b"\n\n[... cut by gpu_check: file over the size limit ...]\n\n"
            keep = max(MAX_FILE_BYTES - len(note), 0)
            head, tail = keep // 2, keep - keep // 2
            with open(path, "wb") as f:
                f.write(data[:head] + note + data[len(data) - tail:])
    files = sorted(glob.glob(os.path.join(out_dir, "*")), key=os.path.getmtime)
    keep = {"gpu_check.json", "SUMMARY.md", "pytest.log", "parts.log"}
    extra = [f for f in files if os.path.basename(f) not in keep]
    while len(files) > MAX_FILES and extra:
        victim = extra.pop(0)
        os.remove(victim)
        files.remove(victim)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bash scripts/gpu_check.sh", description="The GPU kit (issue #21).")
    ap.add_argument("outdir", nargs="?", default=None, help="default benchmarks/results/<date>-<device>/")
    ap.add_argument("--commit", default=None, help="commit the run stands for (default: git rev-parse HEAD)")
    ap.add_argument("--dry-run", action="store_true", help="list the parts and check what they use; no GPU needed")
    ap.add_argument("--only", default=None, help="comma-separated part names to run (default: all)")
    ap.add_argument("--allow-no-gpu", action="store_true", help="run even without a GPU (to test the kit itself)")
    ap.add_argument("--probe-env", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--probe-gloo", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--playground", nargs=2, metavar=("DIR", "JSON"), help=argparse.SUPPRESS)
    ap.add_argument("--check-uses", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.build:
        return build()
    if a.check_uses:
        spec = json.loads(a.check_uses)
        problems = _check_uses(spec["modules"], spec["scripts"])
        sys.stdout.flush()
        print("\n" + json.dumps(problems))
        return 0
    for flag, fn in (("probe_env", probe_env), ("probe_gloo", probe_gloo)):
        if getattr(a, flag):
            res = fn()
            with open(getattr(a, flag), "w") as f:
                json.dump(res, f, indent=1)
            print(json.dumps(res, indent=1))
            return 0
    if a.playground:
        res = playground(a.playground[0])
        with open(a.playground[1], "w") as f:
            json.dump(res, f, indent=1)
        return 0
    parts = default_parts()
    if a.only:
        names = set(a.only.split(","))
        parts = [p for p in parts if p.name in names]
    if a.dry_run:
        return dry_run(parts)
    import torch

    if not torch.cuda.is_available() and not a.allow_no_gpu:
        print("gpu_check: no CUDA GPU here (use --dry-run to check the kit without one)", file=sys.stderr)
        return 2
    out_dir = os.path.abspath(a.outdir or default_out_dir())
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.monotonic()
    records = run_parts(parts, out_dir)
    doc = assemble(records, commit=_commit(a.commit), wall_s=time.monotonic() - t0)
    doc["compile_gate"] = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "compile_gate-*.json"))):
        with open(path) as f:
            g = json.load(f)
        doc["compile_gate"][os.path.basename(path)] = {
            "meta": g.get("meta"), "summary": g.get("summary"),
            "violations": sum(bool(r.get("violations")) for r in g.get("records", []))}
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(os.path.join(out_dir, "SUMMARY.md"), "w") as f:
        f.write(render_summary(doc))
    _cap_files(out_dir)
    bad = [p["name"] for p in doc["parts"] if p["status"] != "ok"]
    print(f"gpu_check: wrote {out_dir} ({doc['wall_s']:.0f} s); " + (f"not ok: {', '.join(bad)}" if bad else "all parts ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
