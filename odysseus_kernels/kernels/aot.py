"""Ahead-of-time compilation of our Triton kernels for a GPU architecture, on a machine without one.

Every Triton kernel family keeps one launch-config table in its ``configs.py`` (the dispatch's only
source of configs; it imports no kernel) and, in its ``gate.py``, ``gate_cases() -> list[GateCase]``:
every (kernel, config) the dispatch can pick, with the exact signature and constexprs the wrapper
passes. The compile gate (``tests/test_compile_gate.py``,
``python -m odysseus_kernels.kernels.aot``) compiles each case for sm_90 and sm_80 with Triton's own
compiler and bundled ptxas, and checks shared memory, registers, spills and wgmma::

    python -m odysseus_kernels.kernels.aot [--out DIR] [--arch 90,80] [--families attention,...]
                                           [--jobs 2] [--cache-dir DIR] [--timeout S]

writes ``compile_gate-triton<version>.json`` (one record per (case, arch)) and ``.md`` (a summary per
family and arch, the violations, every case) into ``--out`` (default
``benchmarks/results/compile_gate/``) and exits 0 if every case passes, 1 on any violation, 2 if no
case was found. Violations: a compile failure; shared memory above the arch's per-block limit
(:data:`SHARED_LIMIT`); register spills in a bf16/fp16 case at head_dim 64 or 128; no ``wgmma`` in the
sm_90 PTX of a bf16/fp16 case whose kernel uses ``tl.dot``.

The gate must not run under ``TRITON_INTERPRET=1`` (``@triton.jit`` then makes interpreter functions
that cannot be compiled): the CLI re-executes itself without it, :func:`compile_case` refuses.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

# Shared memory per block (bytes) a kernel may use: cudaDevAttrMaxSharedMemoryPerBlockOptin.
SHARED_LIMIT = {90: 232_448, 80: 166_912}
SIXTEEN_BIT = ("bf16", "fp16")
SPILL_HEAD_DIMS = (64, 128)  # at bf16/fp16, these head dims must not spill
DEFAULT_OUT = os.path.join("benchmarks", "results", "compile_gate")
_PKG = "odysseus_kernels.kernels"


@dataclass(frozen=True)
class GateCase:
    """One kernel at one launch configuration, as the dispatch would launch it.

    Attributes:
        kernel: ``"<family>.<kernel name>"``, e.g. ``"attention._fwd_kernel"``.
        fn: the ``@triton.jit`` function (the ``JITFunction``, not an ``Autotuner``: use ``.fn``).
        signature: every argument name -> Triton type (``"*bf16"``, ``"*fp32"``, ``"*i32"``, ``"i32"``,
            ``"i64"``, ``"fp32"``, or ``"constexpr"`` for the constexprs below).
        constexprs: constexpr argument name -> value (block sizes, flags, head dims).
        num_warps, num_stages: the launch options.
        dtype: the input dtype the case stands for (``"bf16"``, ``"fp16"``, ``"fp32"``).
        head_dim: the head dim the case stands for.
        archs: compute capabilities (``90``, ``80``) this case can be picked on.
        tags: anything else worth reporting (mask flags, GQA, ...).
        uses_dot: the kernel multiplies tiles with ``tl.dot`` (then its 16-bit sm_90 build must use
            wgmma); ``False`` for kernels without matrix products (no tensor-core check).
        check_spills: ``None``: spills are a violation at bf16/fp16 head_dim 64/128 only; ``True``:
            always; ``False``: never (reported only).
        aligned: names of the arguments the JIT specializes as divisible by 16 when the wrapper launches
            it (pointers 16-byte aligned, integers multiples of 16: Triton's ``tt.divisibility``
            specialization, which decides vectorized loads, ``cp.async``/TMA pipelining and so shared
            memory and registers). ``None``: every pointer argument (torch allocations are aligned);
            list integer arguments (strides, lengths) that are multiples of 16 in the cases it stands for.
    """

    kernel: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    dtype: str
    head_dim: int
    archs: tuple = (90, 80)
    tags: dict = field(default_factory=dict)
    uses_dot: bool = True
    check_spills: bool | None = None
    aligned: tuple | None = None

    def divisible_args(self) -> tuple:
        """The argument names specialized as divisible by 16 (see ``aligned``)."""
        if self.aligned is not None:
            return tuple(self.aligned)
        return tuple(k for k, v in self.signature.items() if str(v).startswith("*"))

    @property
    def label(self) -> str:
        cx = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        return f"{self.kernel}[{self.dtype},d{self.head_dim},w{self.num_warps},s{self.num_stages},{cx}]"


# --------------------------------------------------------------------------- the JIT's own keying

class JitBinding:
    """Triton's own argument binding of one kernel for an ``sm_<arch>`` CUDA target, without a GPU: the
    binder ``JITFunction.run`` calls on every launch (each argument's specialization) and a cache key
    from it, before the JIT looks up (or compiles) the kernel and calls its launcher. ``kernel`` is the
    ``@triton.jit`` function, compiled or interpreted (``TRITON_INTERPRET=1``: its ``do_not_specialize``
    lists are kept).

    ``binding(*args, **kwargs)`` -> ``(specialization, options, key)``: per argument, in order, the
    JIT's ``(type, attribute)`` (``"D"``: divisible by 16; an integer equal to 1 becomes
    ``("constexpr", 1)``; ``None``: not specialized) or ``("constexpr", value)``; the launch options;
    and a key built like the JIT's compile-cache key (two launches share a key exactly when the JIT
    would run them with one compiled kernel; the JIT's own key string also holds its debug and
    instrumentation options). ``names`` and ``declared`` (whether each argument is a
    ``tl.constexpr``) follow the argument order. Not in it: the rest of ``JITFunction.run`` (device
    and stream lookups, hooks, launch metadata) and the driver's launch call."""

    def __init__(self, kernel, arch: int = 90):
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
        from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

        fn = getattr(kernel, "fn", kernel)
        opts = getattr(kernel, "kwargs", None)  # an interpreted kernel keeps its @triton.jit arguments here
        if opts is None:
            opts = {"do_not_specialize": getattr(kernel, "do_not_specialize", None),
                    "do_not_specialize_on_alignment": getattr(kernel, "do_not_specialize_on_alignment", None)}
        opts = {k: opts[k] for k in ("do_not_specialize", "do_not_specialize_on_alignment") if opts.get(k)}
        from triton.runtime import jit as _jit

        registry = getattr(_jit, "_triton_jit_function_registry", None)  # Triton >= 3.7 registers every JITFunction
        held = dict(registry) if registry is not None else None
        jit = JITFunction(fn, **opts)
        if registry is not None:  # this copy must not replace the real kernel's entry
            registry.clear()
            registry.update(held)
        self.name = fn.__name__
        self.names = tuple(jit.arg_names)
        self.declared = tuple(p.is_constexpr for p in jit.params)
        self._bind = create_function_from_signature(jit.signature, jit.params, make_backend(GPUTarget("cuda", arch, 32)))
        self._key = compute_cache_key
        self._keys: dict = {}

    def __call__(self, *args, **kwargs):
        _, spec, options = self._bind(*args, **kwargs)
        return spec, options, self._key(self._keys, spec, options)

    _cache: dict = {}

    @classmethod
    def of(cls, kernel, arch: int = 90) -> "JitBinding":
        """The binding of ``kernel`` for ``sm_<arch>``, built once per process (building one compiles
        Triton's binder; code that binds every launch asks here)."""
        key = (kernel, arch)
        if key not in cls._cache:
            cls._cache[key] = cls(kernel, arch)
        return cls._cache[key]


# --------------------------------------------------------------------------- families

def family_module(name: str) -> str:
    """``"attention"`` -> ``"odysseus_kernels.kernels.attention.gate"``; a dotted name is a module."""
    return name if "." in name else f"{_PKG}.{name}.gate"


def family_name(module: str) -> str:
    prefix = _PKG + "."
    if module.startswith(prefix) and module.endswith(".gate"):
        return module[len(prefix):-len(".gate")]
    return module


def discover_families() -> list[str]:
    """Short names of every family: ``odysseus_kernels/kernels/<family>/`` with a launch-config table
    (``configs.py``) and its gate cases (``gate.py``) (sorted)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(d for d in os.listdir(here)
                  if os.path.isfile(os.path.join(here, d, "configs.py"))
                  and os.path.isfile(os.path.join(here, d, "gate.py"))
                  and os.path.isfile(os.path.join(here, d, "__init__.py")))


_CASES: dict[str, list] = {}


def family_cases(module: str) -> list[GateCase]:
    """``gate_cases()`` of a family's gate module (cached per process; it must be deterministic)."""
    if module not in _CASES:
        mod = importlib.import_module(module)
        if not hasattr(mod, "gate_cases"):
            raise AttributeError(f"{module} has no gate_cases()")
        cases = list(mod.gate_cases())
        for c in cases:
            if not isinstance(c, GateCase):
                raise TypeError(f"{module}.gate_cases() returned {type(c).__name__}, not GateCase")
        _CASES[module] = cases
    return _CASES[module]


# --------------------------------------------------------------------------- compiling one case

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off", "no")


def _ptxas() -> str:
    import triton

    try:
        from triton import knobs

        return knobs.nvidia.ptxas.path
    except (ImportError, AttributeError):
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _ptxas_flags() -> list[str]:
    """The flags Triton's ``make_cubin`` gives ptxas that change register allocation."""
    import inspect

    from triton.backends.nvidia import compiler as nv

    try:
        src = inspect.getsource(nv.CUDABackend.make_cubin)
    except (OSError, TypeError, AttributeError):
        src = ""
    return ["-lineinfo"] + (["--regAllocOptLevel=2"] if "--regAllocOptLevel=2" in src else [])


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def _parse_ptxas(log: str) -> dict:
    return {k: sum(int(m) for m in r.findall(log)) if k != "registers" else max(map(int, r.findall(log)), default=0)
            for k, r in _PTXAS_RE.items()}


def _ptxas_cmd(arch: int) -> list[str]:
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    return [_ptxas(), *_ptxas_flags(), "-v", f"--gpu-name={gpu}"]


def _usage_cache_path(ptx: str, arch: int, cache_dir: str | None) -> str | None:
    if not cache_dir:
        return None
    key = hashlib.sha256((" ".join(_ptxas_cmd(arch)) + "\n" + ptx).encode()).hexdigest()
    return os.path.join(cache_dir, "gate-ptxas", key + ".json")


def _store_usage(path: str | None, usage: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp_path = f"{path}.{os.getpid()}"
        with open(tmp_path, "w") as f:
            json.dump(usage, f)
        os.replace(tmp_path, path)


def ptxas_usage(ptx: str, arch: int, cache_dir: str | None = None) -> dict:
    """Registers, stack frame and spill bytes of ``ptx`` from ``ptxas -v`` (Triton's bundled ptxas and
    flags, ``sm_90a`` for 90 as Triton builds it). Results are cached in ``cache_dir`` by content."""
    path = _usage_cache_path(ptx, arch, cache_dir)
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    with tempfile.TemporaryDirectory(prefix="gate-ptxas-") as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run(_ptxas_cmd(arch) + [src, "-o", os.path.join(tmp, "k.cubin")], capture_output=True,
                              text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas -v failed ({proc.returncode}): {log[-2000:]}")
    usage = _parse_ptxas(log)
    _store_usage(path, usage)
    return usage


def compile_case(case: GateCase, arch: int, *, cache_dir: str | None = None) -> dict:
    """Compile ``case`` for ``sm_<arch>`` (no GPU needed) and measure it.

    Returns a record: kernel, label, config (constexprs, num_warps, num_stages), dtype, head_dim, tags,
    arch, triton (version), shared (bytes), registers, spills (spill store + load bytes), spill_stores,
    spill_loads, stack, wgmma (``"wgmma"`` in the PTX), ok (compiled and measured), reason (why not),
    compile_s. Verdicts are :func:`violations`'. ``cache_dir``: where ptxas results are cached (the
    Triton cache itself is ``TRITON_CACHE_DIR``).
    """
    import triton

    rec = {
        "kernel": case.kernel, "label": case.label,
        "config": {"constexprs": {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
                                  for k, v in case.constexprs.items()},
                   "num_warps": case.num_warps, "num_stages": case.num_stages},
        "dtype": case.dtype, "head_dim": case.head_dim, "uses_dot": case.uses_dot,
        "tags": {str(k): v if isinstance(v, (bool, int, float, str, type(None))) else repr(v) for k, v in case.tags.items()},
        "check_spills": case.check_spills, "aligned": list(case.divisible_args()), "arch": arch, "triton": triton.__version__,
        "shared": None, "registers": None, "spills": None, "spill_stores": None, "spill_loads": None,
        "stack": None, "wgmma": None, "ok": False, "reason": None, "compile_s": None,
    }
    t0 = time.perf_counter()
    try:
        if _interpreting():
            raise RuntimeError("TRITON_INTERPRET is set: the compile gate needs the real compiler "
                               "(run python -m odysseus_kernels.kernels.aot, which re-executes without it)")
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction

        fn = case.fn
        if not isinstance(fn, JITFunction):
            raise TypeError(f"{case.kernel}: fn is {type(fn).__name__}, not a triton JITFunction "
                            "(pass the @triton.jit function; for an Autotuner use .fn)")
        names = list(fn.arg_names)
        unknown = [a for a in case.divisible_args() if a not in names]
        if unknown:
            raise ValueError(f"{case.kernel}: aligned names {unknown} are not arguments of {fn.__name__}")
        attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in case.divisible_args()}
        src = ASTSource(fn, dict(case.signature), dict(case.constexprs), attrs)
        # Triton prints its own ptxas -v log with TRITON_DUMP_PTXAS_LOG=1: the exact flags, no second
        # ptxas run. On a Triton cache hit there is no log and ptxas_usage() runs ptxas itself.
        buf, old = io.StringIO(), os.environ.get("TRITON_DUMP_PTXAS_LOG")
        os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
        try:
            with contextlib.redirect_stdout(buf):
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                          options={"num_warps": case.num_warps, "num_stages": case.num_stages})
        finally:
            if old is None:
                os.environ.pop("TRITON_DUMP_PTXAS_LOG", None)
            else:
                os.environ["TRITON_DUMP_PTXAS_LOG"] = old
        ptx = compiled.asm["ptx"]
        rec["shared"] = int(compiled.metadata.shared)
        rec["wgmma"] = "wgmma" in ptx
        log = buf.getvalue()
        if _PTXAS_RE["registers"].search(log):
            usage = _parse_ptxas(log)
            _store_usage(_usage_cache_path(ptx, arch, cache_dir), usage)  # for later runs that hit the Triton cache
        else:
            usage = ptxas_usage(ptx, arch, cache_dir)
        rec.update(registers=usage["registers"], stack=usage["stack"], spill_stores=usage["spill_stores"],
                   spill_loads=usage["spill_loads"], spills=usage["spill_stores"] + usage["spill_loads"])
        rec["ok"] = True
    except Exception as e:  # noqa: BLE001  (every failure is a verdict, recorded with its text)
        text = f"{type(e).__name__}: {e}"
        rec["reason"] = text if len(text) <= 4000 else text[:2000] + "\n...\n" + text[-2000:]
    rec["compile_s"] = round(time.perf_counter() - t0, 2)
    return rec


def violations(rec: dict) -> list[str]:
    """What is wrong with one record of :func:`compile_case` (empty: it passes)."""
    if not rec.get("ok"):
        return [f"compile failed: {(rec.get('reason') or '?').splitlines()[0][:300]}"]
    out = []
    arch, limit = rec["arch"], SHARED_LIMIT.get(rec["arch"])
    if limit is not None and rec["shared"] > limit:
        out.append(f"shared memory {rec['shared']:,} B > {limit:,} B (sm_{arch} per-block limit)")
    sixteen = rec["dtype"] in SIXTEEN_BIT
    check = rec.get("check_spills")
    must_not_spill = check if check is not None else (sixteen and rec["head_dim"] in SPILL_HEAD_DIMS)
    if must_not_spill and rec["spills"]:
        out.append(f"register spills: {rec['spill_stores']} B stored, {rec['spill_loads']} B loaded")
    if arch >= 90 and sixteen and rec.get("uses_dot", True) and not rec["wgmma"]:
        out.append("no wgmma in the sm_90 PTX of a 16-bit kernel")
    return out


# --------------------------------------------------------------------------- the gate (parallel)

def _worker_init(cache_dir):
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    os.environ.pop("TRITON_INTERPRET", None)


def _compile_task(module: str, index: int, arch: int, cache_dir: str) -> dict:
    case = family_cases(module)[index]
    rec = compile_case(case, arch, cache_dir=cache_dir)
    rec["family"] = family_name(module)
    return rec


def collect_tasks(modules: list[str], archs: list[int]) -> list[tuple[str, int, int]]:
    """(module, case index, arch) of every case of the families on the archs it can be picked on,
    each distinct compilation once (same kernel, signature, constexprs and options)."""
    tasks, seen = [], set()
    for module in modules:
        for i, c in enumerate(family_cases(module)):
            for arch in archs:
                if arch not in tuple(c.archs):
                    continue
                key = (module, c.kernel, getattr(c.fn, "__qualname__", repr(c.fn)), arch, c.num_warps, c.num_stages,
                       tuple(sorted(c.signature.items())), tuple(sorted((k, repr(v)) for k, v in c.constexprs.items())),
                       c.dtype, c.head_dim)
                if key in seen:
                    continue
                seen.add(key)
                tasks.append((module, i, arch))
    return tasks



def _failed_record(module, index: int, arch: int, reason: str) -> dict:
    """The record of a case that produced no measurement (its worker crashed or the gate ran out of time)."""
    case = family_cases(module)[index]
    return {"family": family_name(module), "kernel": case.kernel, "label": case.label, "arch": arch,
            "dtype": case.dtype, "head_dim": case.head_dim, "ok": False, "reason": reason}

def run_gate(modules: list[str], archs: list[int], *, jobs: int = 2, cache_dir: str | None = None,
             timeout: float = 3000.0, progress=print) -> list[dict]:
    """Compile every case of the family modules for ``archs`` in ``jobs`` spawned processes sharing one
    Triton cache (``<cache_dir>/triton``; a temporary one if ``None``). Returns the records, each with
    its ``violations``; compilations still running after ``timeout`` seconds are recorded as failed."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    tasks = collect_tasks(modules, archs)
    own = cache_dir is None
    cache_dir = cache_dir or tempfile.mkdtemp(prefix="odysseus-gate-")
    os.makedirs(cache_dir, exist_ok=True)
    records: list[dict] = []
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=mp.get_context("spawn"),
                               initializer=_worker_init, initargs=(cache_dir,))
    try:
        futs = {pool.submit(_compile_task, m, i, a, cache_dir): (m, i, a) for m, i, a in tasks}
        pending = set(futs)
        while pending:
            left = timeout - (time.perf_counter() - t0)
            done, pending = wait(pending, timeout=max(left, 0), return_when=FIRST_COMPLETED)
            if not done:
                break
            for f in done:
                m, i, a = futs[f]
                try:
                    rec = f.result()
                except Exception as e:  # noqa: BLE001  (a crashed worker: record it, go on)
                    rec = _failed_record(m, i, a, f"worker failed: {type(e).__name__}: {e}")
                rec["violations"] = violations(rec)
                records.append(rec)
                if progress:
                    verdict = "ok" if not rec["violations"] else "FAIL: " + "; ".join(rec["violations"])
                    progress(f"[{len(records)}/{len(tasks)}] sm_{a} {rec['label']}: shared={rec.get('shared')} "
                             f"regs={rec.get('registers')} spills={rec.get('spills')} wgmma={rec.get('wgmma')} "
                             f"({rec.get('compile_s')} s) {verdict}", flush=True)
        for f in pending:
            m, i, a = futs[f]
            rec = _failed_record(m, i, a, f"timeout: the gate's {timeout:.0f} s were over before it compiled")
            rec["violations"] = violations(rec)
            records.append(rec)
    finally:
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=not any(not f.done() for f in futs), cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()
        if own:
            shutil.rmtree(cache_dir, ignore_errors=True)
    records.sort(key=lambda r: (r["family"], r["kernel"], -r["arch"], r["label"]))
    return records


# --------------------------------------------------------------------------- reports

def summarize(records: list[dict]) -> list[dict]:
    """One row per (family, arch): cases, failures, max shared (and the limit), max registers, cases
    with spills (all / those that must not spill) and max spill bytes, 16-bit dot cases with wgmma."""
    rows = {}
    for r in records:
        key = (r["family"], r["arch"])
        row = rows.setdefault(key, {"family": r["family"], "arch": r["arch"], "cases": 0, "compiled": 0,
                                    "max_shared": 0, "shared_limit": SHARED_LIMIT.get(r["arch"]), "max_regs": 0,
                                    "spilling": 0, "max_spill_bytes": 0, "wgmma": 0, "wgmma_needed": 0,
                                    "violations": 0})
        row["cases"] += 1
        row["violations"] += bool(r["violations"])
        if not r.get("ok"):
            continue
        row["compiled"] += 1
        row["max_shared"] = max(row["max_shared"], r["shared"])
        row["max_regs"] = max(row["max_regs"], r["registers"])
        row["spilling"] += r["spills"] > 0
        row["max_spill_bytes"] = max(row["max_spill_bytes"], r["spills"])
        if r["arch"] >= 90 and r["dtype"] in SIXTEEN_BIT and r.get("uses_dot", True):
            row["wgmma_needed"] += 1
            row["wgmma"] += bool(r["wgmma"])
    return [rows[k] for k in sorted(rows)]


def _md_table(cols: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return out


def render_markdown(records: list[dict], meta: dict) -> str:
    summary = summarize(records)
    bad = [r for r in records if r["violations"]]
    lines = [f"# Compile gate: Triton {meta['triton']}", "",
             f"{len(records)} compilations ({meta['date']}, commit {meta.get('commit') or '?'}, "
             f"archs {', '.join('sm_%d' % a for a in meta['archs'])}, {meta['wall_s']:.0f} s with {meta['jobs']} jobs): "
             f"**{'PASS' if not bad else f'FAIL, {len(bad)} violating'}**.", "",
             "Limits: shared memory per block sm_90 232,448 B, sm_80 166,912 B; no register spills at "
             "bf16/fp16 head_dim 64/128; wgmma in every 16-bit sm_90 kernel with tl.dot.", ""]
    lines += _md_table(
        ["family", "arch", "cases", "compiled", "max shared (B)", "limit (B)", "max regs", "spilling cases",
         "max spills (B)", "wgmma (16-bit)", "violations"],
        [[s["family"], f"sm_{s['arch']}", s["cases"], s["compiled"], f"{s['max_shared']:,}",
          f"{s['shared_limit']:,}" if s["shared_limit"] else "-", s["max_regs"], s["spilling"],
          s["max_spill_bytes"], f"{s['wgmma']}/{s['wgmma_needed']}" if s["arch"] >= 90 else "-", s["violations"]]
         for s in summary])
    if bad:
        lines += ["", "## Violations", ""]
        lines += [f"- sm_{r['arch']} `{r['label']}`: " + "; ".join(r["violations"]) for r in bad]
    lines += ["", "## Every case", ""]
    lines += _md_table(
        ["kernel", "dtype", "d", "warps", "stages", "constexprs", "arch", "shared", "regs", "spills", "wgmma", "verdict"],
        [[r["kernel"], r["dtype"], r["head_dim"], r.get("config", {}).get("num_warps", "?"),
          r.get("config", {}).get("num_stages", "?"),
          ", ".join(f"{k}={v}" for k, v in sorted(r.get("config", {}).get("constexprs", {}).items())),
          f"sm_{r['arch']}", r.get("shared"), r.get("registers"), r.get("spills"), r.get("wgmma"),
          "ok" if not r["violations"] else "**" + "; ".join(r["violations"]).replace("|", "/") + "**"]
         for r in records])
    return "\n".join(lines) + "\n"


def write_report(records: list[dict], out_dir: str, meta: dict) -> tuple[str, str]:
    """``<out_dir>/compile_gate-triton<version>.json`` (meta, summary, records) and ``.md``."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"compile_gate-triton{meta['triton']}")
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summarize(records), "records": records}, f, indent=1, default=repr)
    with open(base + ".md", "w") as f:
        f.write(render_markdown(records, meta))
    return base + ".json", base + ".md"


def _commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=here,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m odysseus_kernels.kernels.aot",
                                description="Ahead-of-time compile gate for the Triton kernels (no GPU needed).")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    p.add_argument("--arch", default="90,80", help="compute capabilities, comma-separated (default 90,80)")
    p.add_argument("--families", default=None,
                   help="comma-separated family names (kernels/<family>/gate.py) or module paths; "
                        "default: every family with a configs.py and a gate.py")
    p.add_argument("--jobs", type=int, default=2, help="parallel compile processes (default 2)")
    p.add_argument("--cache-dir", default=None, help="Triton/ptxas cache shared by the jobs (default: a "
                   "temporary directory for this run)")
    p.add_argument("--timeout", type=float, default=3000.0, help="seconds for the whole gate (default 3000)")
    p.add_argument("--quiet", action="store_true", help="no line per compilation")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _interpreting():
        # @triton.jit made interpreter functions in this process: start again without the interpreter.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        print("aot: TRITON_INTERPRET is set; re-executing without it", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "odysseus_kernels.kernels.aot", *argv], env)
    args = parse_args(argv)
    import triton

    archs = [int(a) for a in str(args.arch).replace(" ", "").split(",") if a]
    names = [f for f in args.families.split(",") if f] if args.families else discover_families()
    modules = []
    for name in names:
        mod = family_module(name)
        if importlib.util.find_spec(mod.rsplit(".", 1)[0]) is None or importlib.util.find_spec(mod) is None:
            print(f"aot: no family {name!r} (module {mod} not found)", file=sys.stderr)
            return 2
        modules.append(mod)
    ncases = sum(len(family_cases(m)) for m in modules)
    if not modules or ncases == 0:
        print(f"aot: no gate cases found (families: {', '.join(names) or 'none'})", file=sys.stderr)
        return 2
    print(f"aot: Triton {triton.__version__} ({os.path.dirname(triton.__file__)}), families "
          f"{', '.join(family_name(m) for m in modules)}: {ncases} cases, archs {archs}, {args.jobs} jobs", flush=True)
    t0 = time.perf_counter()
    records = run_gate(modules, archs, jobs=args.jobs, cache_dir=args.cache_dir, timeout=args.timeout,
                       progress=None if args.quiet else print)
    wall = time.perf_counter() - t0
    if not records:
        print("aot: no case is picked on these archs", file=sys.stderr)
        return 2
    meta = {"triton": triton.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": _commit(),
            "archs": archs, "families": [family_name(m) for m in modules], "jobs": args.jobs,
            "wall_s": round(wall, 1), "shared_limit": {str(k): v for k, v in SHARED_LIMIT.items()},
            "ptxas": _ptxas(), "python": sys.version.split()[0]}
    jpath, mpath = write_report(records, args.out, meta)
    bad = [r for r in records if r["violations"]]
    for s in summarize(records):
        print(f"aot: {s['family']:>18} sm_{s['arch']}: {s['cases']} cases, max shared {s['max_shared']:,} B, "
              f"max regs {s['max_regs']}, {s['spilling']} spilling, wgmma {s['wgmma']}/{s['wgmma_needed']}, "
              f"{s['violations']} violating")
    print(f"aot: wrote {jpath} and {mpath} ({wall:.0f} s)")
    if bad:
        print(f"aot: FAIL: {len(bad)} of {len(records)} compilations violate the gate:", file=sys.stderr)
        for r in bad:
            print(f"  sm_{r['arch']} {r['label']}: {'; '.join(r['violations'])}", file=sys.stderr)
        return 1
    print(f"aot: PASS ({len(records)} compilations, Triton {triton.__version__})")
    return 0


if __name__ == "__main__":
    # Run main() of the importable module (not __main__), so the worker processes unpickle its functions.
    from odysseus_kernels.kernels.aot import main as _main

    sys.exit(_main())
