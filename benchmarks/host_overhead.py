"""Host overhead of the ring driver (issue #18 item 4): ring attention forward + backward at tiny shapes
(so compute is negligible and what is left is Python, autograd and the driver) against the bare
point-to-point exchanges it needs (the same number of batches with the same peers, tensor sizes and
tags, posted through ``odysseus_kernels.comm.exchange`` and waited one after the other), and the cost
of one cross-rank metadata check (``comm.rank_consistent``) against a bare 8-byte all-gather.

    python benchmarks/host_overhead.py [--quick] [--out DIR] [--device cpu|cuda|auto] [--world 2]

Two times per call: wall time, and the calling thread's CPU time (``time.thread_time``: the host work
itself, without the waits, which on a GPU is what the CPU must issue per ring step). On CPU a third
measurement, ``triton-stub``, runs the GPU path's host code (``backend="triton"``: the prepared
launches of every ring step, the exchanges, the check) with the Triton kernels replaced by a no-op
(``TRITON_INTERPRET=1`` and the interpreter's launch stubbed): its host time per ring step predicts
the GPU's before a GPU is at hand (the Triton launcher's own cost is not in it).

Ranks are spawned locally (gloo; on CUDA all ranks share the GPU and the point-to-point exchanges go
through host memory, since gloo cannot send CUDA tensors: ``comm.p2p``; that row is labelled so, and its
waits and copies block the host, so it is not the NCCL hot path, whose host time per step is the
``triton step`` rows). Rows: per-call and
per-ring-step medians (ms) and ``ratio`` = ring / bare exchanges (the driver's host overhead factor),
``ratio`` of the metadata check = check / bare all-gather. The four are timed in alternating rounds
(each a median of its calls, the slowest rank's), so that a change of machine load hits both sides of
a ratio alike; medians and ratios are the medians over the rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_run_args, bench, print_table, write_json  # noqa: E402


# the tiny shapes measured: on CPU (gloo ranks, the default backend, and the breakdown) and on a GPU (the
# ring there, and the fused ring steps everywhere: the Triton kernels' shapes)
CPU_SHAPE = {"batch": 1, "tokens": 64, "heads": 2, "head_dim": 32, "dtype": "float32"}
GPU_SHAPE = {"batch": 1, "tokens": 256, "heads": 2, "head_dim": 64, "dtype": "bfloat16"}


def _stub_triton_launch() -> None:
    """Under ``TRITON_INTERPRET=1``: every Triton launch returns at once (the host code around it runs)."""
    from triton.runtime.interpreter import InterpretedFunction

    InterpretedFunction.run = lambda self, *a, **kw: None


class RecordingDriver:
    """A stand-in for Triton's CUDA driver on a machine without a GPU (``install_recording_driver``):
    the JIT really runs (binds, compiles for sm_90 with Triton's own ptxas, caches, "loads" each
    compiled kernel under a handle of its own, checks its shared memory against an H100/H200's); the
    kernel's launcher (Triton's ``CudaLauncher``: its Python wrapper and the C launch call) is replaced
    by a recorder. So ``JITFunction.run`` and the package's direct launches
    (:mod:`odysseus_kernels.kernels.launch`) run their host path up to the launcher. ``calls``: the
    launcher's arguments of every launch (``grid x, y, z, stream, function, packed metadata, launch
    metadata, enter hook, exit hook, *args``) while ``record`` is true; nothing otherwise (a benchmark's
    no-op launcher)."""

    STREAM, SHARED = 7, 232448

    def __init__(self):
        self.calls: list = []
        self.record = True
        self.utils = self
        self.device = 0  # what get_current_device answers (a test may switch it)
        self._handles = itertools.count(0x1000)

    # the driver
    def is_active(self):
        return True

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return self.STREAM

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def launcher_cls(self, src, metadata):
        def launch(*args):
            if self.record:
                self.calls.append(args)
        return launch

    # its utils
    def load_binary(self, name, kernel, shared, device):
        # module, function handle (one per load: every compiled variant has its own), registers, spills, threads
        return 1, next(self._handles), 64, 0, 1024

    def get_device_properties(self, device):
        return {"max_shared_mem": self.SHARED, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}

    def unload_module(self, module):
        return None


def install_recording_driver() -> RecordingDriver:
    """Make a :class:`RecordingDriver` Triton's active driver (a process that never had a GPU and did
    not set ``TRITON_INTERPRET``) and return it."""
    from triton.runtime.driver import driver

    d = RecordingDriver()
    driver.set_active(d)
    return d


def shape_of(cfg: dict) -> str:
    """The ``shape`` column of a measurement's rows: ``"B1 C64 H2 D32 float32"``."""
    return f"B{cfg['batch']} C{cfg['tokens']} H{cfg['heads']} D{cfg['head_dim']} {cfg['dtype']}"


def _ring_inputs(cfg: dict, rank: int, device):
    """One rank's ``q, k, v`` (requiring grad) and ``dout`` of ``cfg``'s shape and dtype on ``device``
    (seeded per rank, so ranks differ)."""
    import torch

    g = torch.Generator().manual_seed(1234 + rank)
    b, c, h, d = cfg["batch"], cfg["tokens"], cfg["heads"], cfg["head_dim"]
    q, k, v, do = (torch.randn(b, c, h, d, generator=g).to(device, getattr(torch, cfg["dtype"])) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    return q, k, v, do


def _rank_main(cfg: dict) -> dict:
    """One rank: time ring fwd+bwd, the captured exchanges replayed bare, the metadata check."""
    import torch
    import torch.distributed as dist

    import odysseus_kernels as ok
    from odysseus_kernels import comm

    rank = dist.get_rank()
    if cfg["device"] == "cuda":
        dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    q, k, v, do = _ring_inputs(cfg, rank, dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if cfg.get("stub_kernels"):  # the GPU path's host code without its kernels (see the module docstring)
        _stub_triton_launch()
    backend = cfg.get("backend", "auto")

    def ring():
        out = ok.ring_attention(q, k, v, causal=True, layout="zigzag", backend=backend)
        out.backward(do)
        q.grad = k.grad = v.grad = None
        sync()

    # Capture the P2P batches one forward + backward posts (peer, shape, dtype, tag of every op).
    batches = []
    orig = dist.batch_isend_irecv

    def spy(ops):
        batches.append([(getattr(op.op, "__name__", str(op.op)), op.peer, tuple(op.tensor.shape), op.tensor.dtype,
                         op.tag) for op in ops])
        return orig(ops)

    dist.batch_isend_irecv = spy
    try:
        ring()
    finally:
        dist.batch_isend_irecv = orig
    replay = []
    nbytes = 0
    for ops in batches:
        sends = [(p, torch.zeros(s, dtype=t, device=dev), tag) for kind, p, s, t, tag in ops if kind == "isend"]
        recvs = [(p, torch.empty(s, dtype=t, device=dev), tag) for kind, p, s, t, tag in ops if kind == "irecv"]
        nbytes += sum(x.numel() * x.element_size() for _, x, _ in recvs)
        replay.append((sends, recvs))

    def bare():
        for sends, recvs in replay:
            comm.exchange(sends, recvs).wait()
        sync()

    mine = torch.zeros(1, dtype=torch.int64, device=dev)

    def check():
        with comm.rank_consistent("host_overhead", None) as chk:
            chk.meta(shape=q.shape, dtype=q.dtype, causal=True, layout="zigzag", window=(-1, -1))

    def gather8():
        comm.all_gather(mine)

    # Alternating rounds (ring, bare, check, all-gather; each a median of its calls), so that a change
    # of machine load hits both sides of a ratio alike; the ratios are per round, their median reported.
    iters, meta_iters, rounds = cfg["iters"], cfg["meta_iters"], cfg["rounds"]
    per = {"ring_ms": [], "bare_ms": [], "check_ms": [], "allgather8_ms": [], "ring_cpu_ms": [], "bare_cpu_ms": []}

    def timed(fn, key):
        dist.barrier()
        c0 = time.thread_time()
        per[key + "_ms"].append(bench(fn, warmup=3, iters=iters))
        per[key + "_cpu_ms"].append((time.thread_time() - c0) * 1e3 / (iters + 3))

    for _ in range(rounds):
        timed(ring, "ring")
        timed(bare, "bare")
        dist.barrier()
        per["check_ms"].append(bench(check, warmup=10, iters=meta_iters))
        dist.barrier()
        per["allgather8_ms"].append(bench(gather8, warmup=10, iters=meta_iters))
    return {"rank": rank, "rounds": per, "batches": len(batches), "ops": sum(len(o) for o in batches),
            "bytes_received": nbytes}


def measure(device: str, world: int, *, quick: bool, stub_kernels: bool = False, timeout: float = 600.0) -> dict:
    """Run the measurement on ``world`` local gloo ranks; the slowest rank's medians (ranks wait on each
    other, so the slowest is the step time). ``stub_kernels``: the GPU path's host code on CPU."""
    from odysseus_kernels.comm import LocalWorld

    cfg = {"device": device, **(CPU_SHAPE if device == "cpu" else GPU_SHAPE),
           "iters": 10 if quick else 20, "meta_iters": 30 if quick else 100, "rounds": 3 if quick else 15,
           "backend": "triton" if stub_kernels else "auto", "stub_kernels": stub_kernels}
    env = os.environ.get("TRITON_INTERPRET")
    if stub_kernels:  # the spawned ranks inherit it before they import triton
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        with LocalWorld(world, threads=1) as w:
            per_rank = w.run(_rank_main, cfg, timeout=timeout)
    finally:
        if stub_kernels:
            if env is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = env
    keys = ("ring_ms", "bare_ms", "check_ms", "allgather8_ms", "ring_cpu_ms", "bare_cpu_ms")
    # per round, the slowest rank (ranks wait on each other, so the slowest is the step time)
    rounds = [{k: max(r["rounds"][k][i] for r in per_rank) for k in keys} for i in range(cfg["rounds"])]
    med = {k: statistics.median(x[k] for x in rounds) for k in keys}
    ratio = statistics.median(x["ring_ms"] / x["bare_ms"] for x in rounds)
    check_ratio = statistics.median(x["check_ms"] / x["allgather8_ms"] for x in rounds)
    cpu_ratio = statistics.median(x["ring_cpu_ms"] / x["bare_cpu_ms"] for x in rounds)
    return {"cfg": cfg, "per_rank": per_rank, "rounds": rounds, **med, "ratio": ratio, "check_ratio": check_ratio,
            "cpu_ratio": cpu_ratio,
            "ratios": [x["ring_ms"] / x["bare_ms"] for x in rounds], "batches": per_rank[0]["batches"],
            "ops": per_rank[0]["ops"], "bytes_received": per_rank[0]["bytes_received"]}


def ring_schedules(world: int, q, k, v, do, layout: str = "zigzag"):
    """A causal ring's forward and backward schedules (``RingForward``, ``RingBackward``) for rank 0 of a
    ``world``-rank ring, driven in one process without communication (the fused Triton steps, scale
    1/8): every receive buffer holds this rank's own K/V (the steps' inputs have their real shapes), and
    the forward has run its steps so the backward gets its ``out`` and ``lse``. The caller drives
    ``fwd.compute(t, None)`` and ``bwd.compute(t, ARRIVED)`` (the travelling dK/dV taken as arrived)."""
    from odysseus_kernels.comm.groups import GroupInfo
    from odysseus_kernels.ops.attention.common import resolve_layout
    from odysseus_kernels.ops.attention.ring import RingBackward, RingForward

    info = GroupInfo(None, 0, world)
    spans, mask = resolve_layout("ring_attention", layout, world, q.shape[1], True, (-1, -1), None)
    kw = dict(mask=mask, scale=0.125, backend="triton")
    fwd = RingForward(info, spans, q, k, v, **kw)
    for buf in fwd.scratch:
        buf.copy_(fwd.first)
    for t in range(world):
        fwd.compute(t, None)
    bwd = RingBackward(info, spans, q, k, v, fwd.out.to(q.dtype), fwd.lse, do, **kw)
    for buf in bwd.scratch:
        buf.copy_(bwd.first)
    return fwd, bwd, (lambda: (RingForward(info, spans, q, k, v, **kw),
                               RingBackward(info, spans, q, k, v, fwd.out.to(q.dtype), fwd.lse, do, **kw)))


class _Arrived:  # a relay's accumulator "arrived" (no communication here)
    def wait(self):
        return None


ARRIVED = _Arrived()


def ring_in_one_process(world: int, q, k, v, do) -> None:
    """Every step of a ``world``-rank zigzag ring's forward and backward (:func:`ring_schedules`, rank 0),
    driven one by one without communication; the travelling dK/dV accumulators are taken as arrived, so
    the last step adds into one."""
    _, bwd, _ = ring_schedules(world, q, k, v, do)  # the forward's steps run in it
    for t in range(world):
        bwd.compute(t, ARRIVED)
        bwd.relay.returns(t)  # the accumulator leaving after step t; its receive buffer is step t+1's
    bwd.finish()


class _TensorsToLauncher:
    """A prepared launch's fingerprint with the same keys that hands the launcher the arguments as they
    are (tensors, not their addresses): the ``"_tensors"`` mode of :func:`_steps_main`, the old way."""

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint

    def __call__(self, args):
        hit = self.fingerprint(args)
        return None if hit is None else (hit[0], args)


def _steps_main(reps: int, device: str) -> dict:
    """In a fresh interpreter: the package's host work of one fused (Triton) ring step, forward and
    backward, without communication (a world-of-two schedule driven step by step in one process):
    microseconds per step, and per call of the two schedules' set-up. ``device``:

    - ``"cuda"``: the real kernels (bf16; tiny shapes, so the GPU keeps up and the time is the host's),
      launched directly (``*_step_us``, the default) and through Triton's JIT on every launch
      (``*_step_jit_us``, ``triton_launch("jit")``);
    - ``"cpu"`` (``TRITON_INTERPRET=1``): the interpreter's launch stubbed, no launcher at all;
    - ``"cpu-jit"`` (no interpreter): Triton's real JIT with a :class:`RecordingDriver` (kernels compiled
      for sm_90, the launcher a no-op), both launch modes as on CUDA.

    What a GPU ring adds per step: posting the exchange (and, off CUDA, the launcher: Triton's
    ``CudaLauncher`` and the driver's launch call)."""
    import torch

    cuda = device == "cuda"
    if device == "cpu":
        _stub_triton_launch()
    elif device == "cpu-jit":
        install_recording_driver().record = False
    from odysseus_kernels.kernels import launch

    torch.set_num_threads(1)
    dev, dtype = (torch.device("cuda", 0), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    b, c, h, d = (GPU_SHAPE[key] for key in ("batch", "tokens", "heads", "head_dim"))
    q, k, v, do = (torch.randn(b, c, h, d, generator=g).to(dev, dtype) for _ in range(4))
    fwd, bwd, setup = ring_schedules(2, q, k, v, do)  # real (out, lse) on CUDA; the stubs compute nothing

    def bwd_step(t):
        bwd.compute(t, ARRIVED)
        bwd.relay.sending.clear()
        bwd.relay.incoming.clear()

    def one_round_us(fn):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        us = (time.perf_counter() - t0) / reps * 1e6
        if cuda:
            torch.cuda.synchronize()
        return us

    calls = {"fwd_step": [lambda t=t: fwd.compute(t, None) for t in (0, 1)],
             "bwd_step": [lambda t=t: bwd_step(t) for t in (0, 1)], "setup": [setup]}
    # the modes measured: direct (the default) and, past the stubbed interpreter, every launch through
    # Triton's JIT ("_jit") and direct launches handing the launcher tensors instead of their addresses
    # ("_tensors": the launcher then asks the driver about every tensor); in alternating rounds, so that
    # a change of machine load hits them alike
    modes = [("", "direct")] + ([("_jit", "jit"), ("_tensors", "direct")] if device != "cpu" else [])
    rounds: dict = {}

    @contextlib.contextmanager
    def mode_of(sfx, mode):
        with launch.triton_launch(mode):
            if sfx != "_tensors":
                yield
                return
            pls = [pl for pl in list(launch._PREPARED.values()) if pl._fingerprint is not None]
            saved = [pl._fingerprint for pl in pls]
            for pl, fp in zip(pls, saved):
                pl._fingerprint = _TensorsToLauncher(fp)
            try:
                yield
            finally:
                for pl, fp in zip(pls, saved):
                    pl._fingerprint = fp

    for sfx, mode in modes:  # warm-up
        with mode_of(sfx, mode):
            for fns in calls.values():
                for fn in fns:
                    for _ in range(50):
                        fn()
    for _ in range(5):
        for sfx, mode in modes:
            with mode_of(sfx, mode):
                for what, fns in calls.items():
                    if what == "setup" and sfx:
                        continue
                    rounds.setdefault(f"{what}{sfx}_us", []).append(statistics.mean(one_round_us(fn) for fn in fns))
    res = {"device": device, "dtype": str(dtype).replace("torch.", ""),
           **{key: statistics.median(v) for key, v in rounds.items()}}
    if device != "cpu":
        res["bwd_jit_over_direct_per_round"] = [round(j / d, 3) for j, d in zip(rounds["bwd_step_jit_us"],
                                                                                 rounds["bwd_step_us"])]
        res["bwd_step_profile"] = _profile(lambda: (bwd_step(0), bwd_step(1)), reps)
        # the set-up of a call's two schedules (199 us on the H200, 2026-12-04: more than a step)
        res["setup_profile"] = _profile(setup, reps)
    return res


def _profile(fn, reps: int, top: int = 14) -> list[str]:
    """Where a step's host time goes: ``fn`` run ``reps`` times under cProfile; the ``top`` functions by
    their own time, each ``"us per call of fn | calls per call of fn | function"`` (cProfile's overhead
    inflates the small ones alike; the shares are what tells)."""
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(reps):
        fn()
    pr.disable()
    st = pstats.Stats(pr).stats
    rows = sorted(((tt, nc, f"{os.path.basename(f)}:{ln}({name})") for (f, ln, name), (_, nc, tt, _, _) in st.items()),
                  reverse=True)[:top]
    return [f"{tt / reps * 1e6:7.2f} us | {nc / reps:5.1f} | {where}" for tt, nc, where in rows]


def _p2p_main(cfg: dict) -> dict:
    """One rank: plain ``torch.distributed`` isend/irecv with the peer (no package code), ``n`` exchanges of
    ``[2, 1, 64, 2, 32]`` fp32 (32 KB) for each busy-wait between posting and waiting (``work_ms``)."""
    import torch
    import torch.distributed as dist

    peer = 1 - dist.get_rank()
    x = torch.zeros(2, 1, 64, 2, 32)
    y = torch.empty_like(x)
    out = {}
    for work in cfg["work_ms"]:
        dist.barrier()
        times = []
        for _ in range(cfg["n"] + cfg["warmup"]):
            t0 = time.perf_counter()
            a, b = dist.isend(x, peer, tag=7), dist.irecv(y, peer, tag=7)
            while time.perf_counter() - t0 < work / 1e3:
                pass
            a.wait()
            b.wait()
            times.append((time.perf_counter() - t0) * 1e3)
        out[work] = times[cfg["warmup"]:]
    return out


def measure_p2p(n: int = 2000, work_ms=(0.0, 0.3, 1.0), timeout: float = 600.0) -> list[dict]:
    """What the machine's gloo transport costs a ring step, without the package: 2 local gloo ranks exchange
    32 KB with plain isend/irecv, with ``work_ms`` of busy compute between posting and waiting. Rows:
    median and 99th percentile ms per exchange and the fraction of exchanges taking 3 ms or more (on a
    2-vCPU machine the transport thread runs mostly once a rank blocks, so compute does not hide the
    exchange, and some exchanges stall for a scheduler tick)."""
    from odysseus_kernels.comm import LocalWorld

    with LocalWorld(2, threads=1) as w:
        per_rank = w.run(_p2p_main, {"n": n, "warmup": min(100, n), "work_ms": list(work_ms)}, timeout=timeout)
    rows = []
    for work in work_ms:
        t = sorted(max(a, b) for a, b in zip(per_rank[0][work], per_rank[1][work]))  # the slower rank per exchange
        rows.append({"device": "cpu", "path": "plain isend/irecv", "world": 2, "shape": "32 KB fp32",
                     "what": f"one exchange, {work:g} ms of compute between post and wait", "steps": 1,
                     "ms": statistics.median(t), "p99_ms": t[min(len(t) - 1, int(0.99 * len(t)))],
                     "frac_3ms": sum(x >= 3.0 for x in t) / len(t), "n": len(t)})
    return rows


def _breakdown_main(cfg: dict) -> dict:
    """One rank: where the host CPU time (``time.thread_time``) of a ring forward + backward on the default
    backend goes, per call: inside ``batch_isend_irecv`` (posting the exchanges), waiting for them, the
    cross-rank metadata check's gather, the block attention kernels (PyTorch's CPU flash kernels), and
    the rest (validation, the schedules' Python, autograd). Wrappers around those functions time them
    (their own cost, a few us per call, lands in "rest").

    Context (``ctx_*``, not parts of the total): per call, the thread's system time and context switches
    (``getrusage``: voluntary = it blocked, involuntary = it was preempted), and the same kernel calls
    replayed back to back in this process (``kernels_alone``: what they cost without waits and switches
    between them)."""
    import resource

    import torch
    import torch.distributed as dist

    import odysseus_kernels as ok
    from odysseus_kernels.comm import validate
    from odysseus_kernels.kernels.attention import cpu_flash

    torch.set_num_threads(1)
    q, k, v, do = _ring_inputs(cfg, dist.get_rank(), torch.device("cpu"))
    acc = dict.fromkeys(("post", "wait", "check", "kernels"), 0.0)
    saved, depth = [], [0]
    kernel_calls, record = [], [False]  # one recorded call's kernel calls (function, args, kwargs), replayed below

    def timed(owner, name, key):
        f = getattr(owner, name)
        saved.append((owner, name, f))

        def wrapper(*a, **kw):  # a timed call inside another (the check's own wait) counts for the outer one
            if record[0] and key == "kernels":
                kernel_calls.append((f, a, kw))
            depth[0] += 1
            t0 = time.thread_time()
            try:
                return f(*a, **kw)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    acc[key] += time.thread_time() - t0
        setattr(owner, name, wrapper)

    def ring():
        ok.ring_attention(q, k, v, causal=True, layout="zigzag").backward(do)
        q.grad = k.grad = v.grad = None

    timed(dist, "batch_isend_irecv", "post")
    timed(torch._C._distributed_c10d.Work, "wait", "wait")
    timed(validate, "_gather_int64", "check")
    timed(cpu_flash, "fwd", "kernels")
    timed(cpu_flash, "bwd", "kernels")
    try:
        for _ in range(20):
            ring()
        acc.update(dict.fromkeys(acc, 0.0))
        ru0 = resource.getrusage(resource.RUSAGE_THREAD)
        t0 = time.thread_time()
        for _ in range(cfg["calls"]):
            ring()
        total = time.thread_time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_THREAD)
        parts = dict(acc)
        record[0] = True  # one more call, not counted, records its kernel calls
        ring()
    finally:
        for owner, name, f in reversed(saved):
            setattr(owner, name, f)
    n = cfg["calls"]
    us = {key: x / n * 1e6 for key, x in parts.items()}
    us["total"] = total / n * 1e6
    us["rest"] = us["total"] - sum(us[key] for key in ("post", "wait", "check", "kernels"))
    us["ctx_system_us"] = (ru1.ru_stime - ru0.ru_stime) / n * 1e6
    us["ctx_voluntary"] = (ru1.ru_nvcsw - ru0.ru_nvcsw) / n
    us["ctx_involuntary"] = (ru1.ru_nivcsw - ru0.ru_nivcsw) / n
    reps = 200
    for f, a, kw in kernel_calls:  # warm
        f(*a, **kw)
    t0 = time.thread_time()
    for _ in range(reps):
        for f, a, kw in kernel_calls:
            f(*a, **kw)
    us["ctx_kernels_alone_us"] = (time.thread_time() - t0) / reps * 1e6
    us["ctx_kernel_calls"] = len(kernel_calls)
    return us


def measure_breakdown(world: int, quick: bool, timeout: float = 600.0) -> list[dict]:
    """:func:`_breakdown_main` on ``world`` local gloo ranks (CPU); rows per part, the slowest rank's."""
    from odysseus_kernels.comm import LocalWorld

    cfg = {**CPU_SHAPE, "calls": 100 if quick else 300}
    with LocalWorld(world, threads=1) as w:
        per_rank = w.run(_breakdown_main, cfg, timeout=timeout)
    total = max(r["total"] for r in per_rank)
    what = {"post": "posting the P2P exchanges (batch_isend_irecv)", "wait": "waiting for communication",
            "check": "the cross-rank metadata check's gather", "kernels": "block attention kernels (CPU flash)",
            "rest": "the rest: validation, schedules, autograd", "total": "ring fwd+bwd, host CPU per call"}
    base = {"device": "cpu", "path": "default backend", "world": world, "shape": shape_of(cfg)}
    rows = [{**base, "what": f"breakdown: {what[key]}", "cpu_us": max(r[key] for r in per_rank),
             "share": max(r[key] for r in per_rank) / total} for key in what]
    # context, the slowest rank's (not parts of the total): why the same code costs more between waits
    worst = max(per_rank, key=lambda r: r["total"])
    alone = worst["ctx_kernels_alone_us"]
    rows.append({**base, "what": f"context: the {worst['ctx_kernel_calls']} block kernel calls of a ring call replayed "
                         f"back to back (in the ring: {worst['kernels'] / alone:.2f}x this)",
                 "cpu_us": alone, "share": alone / worst["total"]})
    rows.append({**base, "what": f"context: system time per ring call ({worst['ctx_voluntary']:.1f} voluntary and "
                         f"{worst['ctx_involuntary']:.1f} involuntary context switches per call)",
                 "cpu_us": worst["ctx_system_us"], "share": worst["ctx_system_us"] / worst["total"],
                 "voluntary_switches": worst["ctx_voluntary"], "involuntary_switches": worst["ctx_involuntary"]})
    return rows


def measure_steps(quick: bool, device: str) -> dict:
    """:func:`_steps_main` in a fresh interpreter (``TRITON_INTERPRET`` must be set, on ``"cpu"``, or unset,
    on ``"cuda"`` and ``"cpu-jit"``, before triton is imported)."""
    import json
    import subprocess

    env = dict(os.environ)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:  # cuda, cpu-jit: the real JIT
        env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_steps", "200" if quick else "1000",
                          "--device", device], env=env, capture_output=True, text=True, timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rows_of(device: str, world: int, m: dict, label: str) -> list[dict]:
    """Rows of one measurement; ``steps`` = ring steps of a forward + backward (``2 * world``: every step
    of a causal zigzag ring has work), ``batches`` = the P2P exchanges they post."""
    steps, batches = 2 * world, m["batches"]
    base = {"device": device, "path": label, "world": world, "shape": shape_of(m["cfg"])}
    return [
        {**base, "what": "ring_attention fwd+bwd (causal zigzag)", "steps": steps, "batches": batches,
         "ms": m["ring_ms"], "ms_per_step": m["ring_ms"] / steps, "ratio": m["ratio"],
         "cpu_ms": m["ring_cpu_ms"], "cpu_us_per_step": m["ring_cpu_ms"] / steps * 1e3, "cpu_ratio": m["cpu_ratio"],
         "ratio_per_round": [round(x, 3) for x in m["ratios"]],
         "ms_per_round": [round(x["ring_ms"], 3) for x in m["rounds"]]},
        {**base, "what": "bare P2P exchanges (same batches, sizes, peers)", "steps": steps, "batches": batches,
         "ms": m["bare_ms"], "ms_per_step": m["bare_ms"] / steps, "ratio": 1.0,
         "cpu_ms": m["bare_cpu_ms"], "cpu_us_per_step": m["bare_cpu_ms"] / steps * 1e3, "cpu_ratio": 1.0,
         "ms_per_round": [round(x["bare_ms"], 3) for x in m["rounds"]], "bytes_received": m["bytes_received"]},
        {**base, "what": "rank_consistent metadata check (per call)", "shape": "-", "steps": 1,
         "ms": m["check_ms"], "ms_per_step": m["check_ms"], "ratio": m["check_ratio"]},
        {**base, "what": "bare 8-byte all_gather (per call)", "shape": "-", "steps": 1,
         "ms": m["allgather8_ms"], "ms_per_step": m["allgather8_ms"], "ratio": 1.0},
    ]


def _step_rows(launch: str) -> list:
    return [(f"{d}_step{sfx}_us", f"fused ring step, {what} (host work, no comm, {how})")
            for sfx, how in (("", launch + ", direct launch (default)"), ("_jit", launch + ", every launch through the JIT"),
                             ("_tensors", launch + ", direct launch, tensors (not addresses) to the launcher"))
            for d, what in (("fwd", "forward"), ("bwd", "backward"))]


# measure_steps' results as rows: (key, what) per device, and each device's "path" column
STEP_ROWS = {
    "cuda": _step_rows("the Triton launch") + [("setup_us", "ring fwd+bwd set-up per call (both schedules)")],
    "cpu": [("fwd_step_us", "fused ring step, forward (host work, no comm, no launcher)"),
            ("bwd_step_us", "fused ring step, backward (host work, no comm, no launcher)"),
            ("setup_us", "ring fwd+bwd set-up per call (both schedules)")],
    "cpu-jit": _step_rows("Triton's JIT, sm_90 kernels, no launcher call"),
}
STEP_PATHS = {"cuda": "triton step", "cpu": "triton-stub step", "cpu-jit": "triton-jit step (recording driver)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(p)
    p.add_argument("--device", choices=["cpu", "cuda", "auto", "cpu-jit"], default="auto",
                   help="auto: CPU always, and CUDA too when a GPU is present")
    p.add_argument("--world", type=int, default=2, help="local ranks (default 2)")
    p.add_argument("--no-stub", action="store_true",
                   help="skip the CPU measurements of the Triton path (triton-stub, triton-jit step)")
    p.add_argument("--p2p-latency", action="store_true",
                   help="also time plain gloo isend/irecv with 0 / 0.3 / 1 ms of compute between post and wait "
                        "(the machine's transport, without the package)")
    p.add_argument("--breakdown", action="store_true",
                   help="also split the CPU ring's host time per call: posting, waiting, the metadata check, the "
                        "block kernels, the rest")
    p.add_argument("--_steps", type=int, default=0, help=argparse.SUPPRESS)  # internal: see measure_steps
    a = p.parse_args(argv)
    if a._steps:
        import json

        print(json.dumps(_steps_main(a._steps, a.device)))
        return 0
    import torch

    devices = ["cpu", "cuda"] if a.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if a.device == "auto" else [a.device])
    runs = [(dev, "default backend" if dev == "cpu" else "default backend, gloo (P2P via host)", False)
            for dev in devices]
    if "cpu" in devices and not a.no_stub:
        runs.append(("cpu", "triton-stub", True))
    rows, errors, profiles, setup_profiles = [], {}, {}, {}

    def save():  # after every measurement: a run stopped later (a budget, a hung transport) keeps what it had
        write_json(a.out, "host_overhead", rows, {"world": a.world, "errors": errors, "bwd_step_profile": profiles,
                                                  "setup_profile": setup_profiles})

    # first the per-step host work (on a GPU machine the most telling number, and the quickest)
    step_devices = [d for d in devices if d == "cuda"] + (["cpu", "cpu-jit"] if "cpu" in devices and not a.no_stub
                                                          else [])
    for dev in step_devices:
        try:
            st = measure_steps(a.quick, dev)
        except Exception as e:  # noqa: BLE001
            errors[f"{dev} steps"] = f"{type(e).__name__}: {str(e)[:2000]}"
            print(f"host_overhead: the per-step measurement on {dev} failed: {str(e)[:500]}", file=sys.stderr)
            continue
        for key, kept, what in (("bwd_step_profile", profiles, "a fused backward step (t = 0 and 1)"),
                                ("setup_profile", setup_profiles, "the set-up of a fused ring call's two schedules")):
            if st.get(key):
                kept[dev] = st[key]
                print(f"host_overhead ({dev}): {what} under cProfile, by own time:\n  " + "\n  ".join(st[key]))
        for key, label in STEP_ROWS[dev]:
            if key not in st:
                continue
            rows.append({"device": "cuda" if dev == "cuda" else "cpu", "path": STEP_PATHS[dev], "world": 2,
                         "shape": shape_of({**GPU_SHAPE, "dtype": st["dtype"]}), "what": label, "steps": 1,
                         "cpu_us_per_step": st[key]})
            if key == "bwd_step_jit_us":  # each round's JIT / direct backward step, the rounds alternating
                rows[-1]["ratio_per_round"] = st["bwd_jit_over_direct_per_round"]
        save()
    for dev, label, stub in runs:
        try:
            m = measure(dev, a.world, quick=a.quick, stub_kernels=stub)
        except Exception as e:  # noqa: BLE001  (gloo may not move CUDA tensors P2P: say so, keep the rest)
            errors[f"{dev} {label}"] = f"{type(e).__name__}: {str(e)[:2000]}"
            print(f"host_overhead: {dev} ({label}) with {a.world} gloo ranks failed: {str(e)[:500]}", file=sys.stderr)
            continue
        rows += rows_of(dev, a.world, m, label)
        save()
    if a.breakdown and "cpu" in devices:
        try:
            parts = measure_breakdown(a.world, a.quick)
        except Exception as e:  # noqa: BLE001
            errors["cpu breakdown"] = f"{type(e).__name__}: {str(e)[:2000]}"
            print(f"host_overhead: the breakdown failed: {str(e)[:500]}", file=sys.stderr)
        else:
            rows += parts
            print("cpu ring fwd+bwd host CPU per call: " + ", ".join(
                f"{r['what'].split(': ', 1)[1]} {r['cpu_us']:.0f} us ({100 * r['share']:.0f}%)" for r in parts
                if r["what"].startswith("breakdown: ")))
            for r in parts:
                if r["what"].startswith("context: "):
                    print(f"cpu ring fwd+bwd, {r['what']}: {r['cpu_us']:.0f} us")
            save()
    if a.p2p_latency and "cpu" in devices:
        try:
            p2p = measure_p2p(500 if a.quick else 2000)
        except Exception as e:  # noqa: BLE001
            errors["cpu p2p"] = f"{type(e).__name__}: {str(e)[:2000]}"
            print(f"host_overhead: the plain isend/irecv measurement failed: {str(e)[:500]}", file=sys.stderr)
        else:
            rows += p2p
            for r in p2p:
                print(f"cpu (plain isend/irecv): {r['what']}: median {r['ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, "
                      f"{100 * r['frac_3ms']:.1f}% of {r['n']} take >= 3 ms")
    if rows:
        print_table(rows, ["device", "path", "what", "shape", "steps", "ms", "ratio", "cpu_ms", "cpu_us_per_step",
                           "cpu_ratio"])
        for dev, label, _ in runs:
            mine = [r for r in rows if r["device"] == dev and r["path"] == label]
            if not mine:
                continue
            ring, _, check, _ = mine[:4]
            print(f"{dev} ({label}): ring fwd+bwd {ring['ms']:.2f} ms wall = {ring['ratio']:.2f}x the bare exchanges "
                  f"(per round {ring['ratio_per_round']}); host CPU {ring['cpu_us_per_step']:.0f} us per ring step "
                  f"({ring['cpu_ratio']:.2f}x the bare exchanges' CPU); metadata check {check['ms'] * 1e3:.0f} us "
                  f"per call ({check['ratio']:.2f}x a bare 8-byte all-gather)")
    save()
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
