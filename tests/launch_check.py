"""Checks of the direct Triton launches (``odysseus_kernels.kernels.launch``) against Triton's own JIT,
without a GPU: run by tests/test_launch_direct.py in a fresh interpreter, without ``TRITON_INTERPRET``,
under each Triton the project supports (the kernels compile for sm_90 with Triton's ptxas; the
driver is ``host_overhead.RecordingDriver``, which records the launcher's arguments).

    python tests/launch_check.py   ->  one JSON line of facts the test asserts on

1. Fingerprints: for launches of every kernel of part 2 with arguments varied around a real launch's
   (tensors at other addresses, alignments and dtypes; integers and floats across Triton's
   specialization and range boundaries), equal fingerprints always mean equal keys of Triton's own
   binder (``aot.JitBinding``: the JIT's binder and cache key), so a direct launch runs the kernel the
   JIT would have chosen.
2. Launches: every launch of a ring's fused steps (zigzag, world 3: position arrays), of a per-block
   attention call with packed documents and GQA, of LASP-2's chunk kernels (forward and backward, a
   per-token decay) and of the persistent GEMM (with a bias) is made twice, through the JIT and in the default mode: the same
   compiled kernel (each has a handle of its own here), and the launcher receives the same grid,
   stream, function, metadata and arguments, except that a direct launch passes no launch metadata and
   no hooks (the JIT's hook chains are empty then), and each tensor as its address (an int).
3. Counts: JIT launches per call once warm (0), with a launch hook or a pre-run hook installed (every
   launch), in ``"jit"`` mode (every launch); a callable grid launches through the JIT; the key changes
   with the current device and the JIT's debug option; the bound on kept fingerprints.
"""
from __future__ import annotations

import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402
import triton  # noqa: E402

import host_overhead  # noqa: E402

DRIVER = host_overhead.install_recording_driver()

from odysseus_kernels.kernels import launch as L  # noqa: E402
from odysseus_kernels.kernels.aot import JitBinding  # noqa: E402
from odysseus_kernels.kernels.attention import triton_attention as ta  # noqa: E402

ORIG = L.PreparedLaunch.__call__
SCALARS = [0, 1, 2, 15, 16, 17, 48, 2 ** 31 - 1, 2 ** 31, -2 ** 31, -2 ** 31 - 1, 2 ** 40, 2 ** 63, 2 ** 64 - 1,
           True, False, 0.5, 2.0]


def _same(a, b) -> bool:
    """The launcher's argument ``b`` (a direct launch's) stands for ``a`` (the JIT's): the same object, an
    equal scalar, or the tensor's address (the launcher reads a tensor's ``data_ptr()``)."""
    if isinstance(a, torch.Tensor):
        return a is b or (type(b) is int and b == a.data_ptr())
    return type(a) is type(b) and a == b


class Twice:
    """``PreparedLaunch.__call__`` replaced: each launch made through the JIT, then in the current mode;
    the two launcher calls compared."""

    def __init__(self):
        self.launches = self.direct = 0
        self.mismatches: list[str] = []
        self.seen: dict = {}  # kernel name -> (prepared launch, grid, args) of its last launch
        self.prepared: set = set()  # every prepared launch used

    def __call__(self, pl, grid, args):
        self.seen[pl.fn.fn.__name__] = (pl, grid, args)
        self.prepared.add(pl)
        n0 = len(DRIVER.calls)
        with L.triton_launch("jit"):
            k_jit = ORIG(pl, grid, args)
        j0 = pl.jit_launches
        k = ORIG(pl, grid, args)
        self.launches += 1
        direct = pl.jit_launches == j0
        self.direct += direct
        jit, mine = DRIVER.calls[n0], DRIVER.calls[n0 + 1]
        name = pl.fn.fn.__name__
        if k is not k_jit:  # every compiled variant has its own function handle (RecordingDriver)
            self.mismatches.append(f"{name}: another compiled kernel than the JIT's")
        elif len(jit) != len(mine):
            self.mismatches.append(f"{name}: {len(jit)} launcher arguments through the JIT, {len(mine)} direct")
        elif not all(_same(a, b) for a, b in zip(jit[:6], mine[:6])):
            self.mismatches.append(f"{name}: grid/stream/function/metadata differ")
        elif not all(_same(a, b) for a, b in zip(jit[9:], mine[9:])):
            bad = [i for i, (a, b) in enumerate(zip(jit[9:], mine[9:])) if not _same(a, b)]
            self.mismatches.append(f"{name}: kernel arguments {bad} differ")
        elif direct and mine[6:9] != (None, None, None):
            self.mismatches.append(f"{name}: a direct launch passed launch metadata or hooks")
        elif direct and any(isinstance(a, torch.Tensor) for a in mine[9:]):
            self.mismatches.append(f"{name}: a direct launch passed a tensor, not its address")
        return k


def _identity(args) -> tuple:
    return tuple((a.data_ptr(), a.dtype) if isinstance(a, torch.Tensor) else (type(a), a) for a in args)


def fingerprints(seen: dict, rng: random.Random, trials: int) -> dict:
    """Equal fingerprints => equal binder keys, over arguments varied around real launches: 1-3
    positions changed, tensors to views of a buffer at byte offsets 0-64 (fp32; fp16 one time in five),
    scalars to :data:`SCALARS`. ``merged``: fingerprints shared by launches with different arguments
    (what a direct launch relies on); ``none``: launches a fingerprint refuses (a scalar's type changed)."""
    facts = {"groups": 0, "merged": 0, "none": 0, "violations": []}
    pool = torch.empty(4096, dtype=torch.float32)
    half = torch.empty(4096, dtype=torch.float16)
    views = [pool[i:][:8] for i in (0, 1, 2, 3, 4, 8, 12, 16)] + [half[i:][:8] for i in (0, 1, 8)]
    for name, (pl, grid, base) in sorted(seen.items()):
        bind = JitBinding.of(pl.fn)
        fp = L.fingerprint_function(pl.fn.params, base)
        groups: dict = {}
        for _ in range(trials):
            args = list(base)
            for i in rng.sample(range(len(args)), rng.choice([1, 2, 3])):
                if isinstance(args[i], torch.Tensor):
                    args[i] = views[rng.randrange(8)] if rng.random() < 0.8 else views[rng.randrange(8, 11)]
                else:
                    args[i] = rng.choice(SCALARS)
            args = tuple(args)
            key = fp(args)
            if key is None:
                facts["none"] += 1
                continue
            groups.setdefault(key, {})[_identity(args)] = bind(*args, **pl.kwargs)[2]
        for key, binder_keys in groups.items():
            facts["groups"] += 1
            facts["merged"] += len(binder_keys) > 1
            if len(set(binder_keys.values())) > 1:
                facts["violations"].append(f"{name}: one fingerprint, {len(set(binder_keys.values()))} binder keys")
    return facts


def main() -> None:
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    facts = {"triton": triton.__version__}
    twice = Twice()
    L.PreparedLaunch.__call__ = lambda self, grid, args: twice(self, grid, args)

    # 2. a zigzag ring (world 3, causal: position arrays) forward and backward, steps driven in one process
    q, k, v, do = (torch.randn(1, 96, 4, 32, generator=g) for _ in range(4))
    host_overhead.ring_in_one_process(3, q, k, v, do)
    # a per-block call with packed documents (HAS_DOCS) and GQA, forward and backward
    kq = torch.randn(2, 40, 2, 16, generator=g)
    qq = torch.randn(2, 40, 4, 16, generator=g)
    for _ in range(2):
        o, lse = ta.attention_block_fwd_triton(qq, kq, kq, causal=True, cu_seqlens=[0, 13, 40], out_dtype=torch.float32)
        ta.attention_block_bwd_triton(o, qq, kq, kq, o, lse, causal=True, cu_seqlens=[0, 13, 40])
    # LASP-2's chunk kernels (state, scan, output; forward and backward, a per-token decay) and the
    # persistent GEMM (with a bias), each called twice
    from odysseus_kernels.kernels.gemm import persistent
    from odysseus_kernels.kernels.gemm.persistent import persistent_gemm
    from odysseus_kernels.kernels.linear_attention import configs as la_configs
    from odysseus_kernels.kernels.linear_attention.api import intra_chunk_bwd, intra_chunk_fwd

    lq, lk, lv, ldo = (torch.randn(1, 100, 2, 32, generator=g) for _ in range(4))
    lg = -torch.rand(1, 100, 2, generator=g) * 0.1
    cfg = la_configs.pick(90, torch.float32, 32)
    a, w, bias = torch.randn(70, 48, generator=g), torch.randn(40, 48, generator=g), torch.randn(40, generator=g)
    persistent.INTERPRET = True  # its guard against CPU tensors on a real GPU: the recording driver launches nothing
    for _ in range(2):
        intra_chunk_fwd(lq, lk, lv, g=lg, backend="triton", config=cfg)
        intra_chunk_bwd(lq, lk, lv, ldo, g=lg, backend="triton", config=cfg)
        persistent_gemm(a, w, bias)
    facts["launches"], facts["direct"], facts["mismatches"] = twice.launches, twice.direct, twice.mismatches

    # 3. counts: a second ring call (fresh schedules, same shapes) launches nothing through the JIT
    L.PreparedLaunch.__call__ = ORIG
    prepared = list(twice.prepared)

    def jit_launches_of(fn):
        before = sum(pl.jit_launches for pl in prepared)
        n0 = len(DRIVER.calls)
        fn()
        return sum(pl.jit_launches for pl in prepared) - before, len(DRIVER.calls) - n0

    def ring_call():
        host_overhead.ring_in_one_process(3, q, k, v, do)

    facts["warm_call"] = jit_launches_of(ring_call)
    from triton import knobs

    def hook(metadata):
        return None

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        facts["hooked_call"] = jit_launches_of(ring_call)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    with L.triton_launch("jit"):
        facts["jit_mode_call"] = jit_launches_of(ring_call)
    facts["after_call"] = jit_launches_of(ring_call)

    def pre_run(*args, **kwargs):
        return None

    fns = {pl.fn for pl in prepared}
    for fn in fns:
        fn.pre_run_hooks.append(pre_run)
    try:
        facts["pre_run_hooked_call"] = jit_launches_of(ring_call)
    finally:
        for fn in fns:
            fn.pre_run_hooks.remove(pre_run)
    # the key's device and options: another current device, or the JIT's debug option, is another key
    pl, grid, args = twice.seen["_fwd_kernel"]
    base = pl._key(args, DRIVER)
    DRIVER.device = 1
    on_1 = pl._key(args, DRIVER)
    DRIVER.device = 0
    knobs.runtime.debug = True
    try:
        debug = pl._key(args, DRIVER)
    finally:
        knobs.runtime.debug = False
    facts["keys_differ"] = [on_1 != base, debug != base, pl._key(args, DRIVER) == base]
    # a callable grid launches through the JIT
    j0 = pl.jit_launches
    pl(lambda meta: grid, args)
    pl(grid, args)
    facts["grid_and_bound"] = [pl.jit_launches - j0]
    # the bound on kept fingerprints: full, it starts over (the next new fingerprint is learnt afresh)
    cap = L.MAX_KERNELS
    L.MAX_KERNELS = len(pl.kernels)
    try:
        first = args[0]
        shifted = torch.empty(first.numel() + 1, dtype=first.dtype)[1:].view(first.shape)  # 4 bytes on
        moved = (shifted,) + tuple(args[1:])  # another alignment: a new fingerprint
        pl(grid, moved)
        facts["grid_and_bound"] += [pl.jit_launches - j0, len(pl.kernels)]
        pl(grid, moved)
        facts["grid_and_bound"] += [pl.jit_launches - j0]
    finally:
        L.MAX_KERNELS = cap

    # 1. fingerprints against the binder, around each kernel's last real launch
    facts["fingerprints"] = fingerprints(twice.seen, rng, 2000)
    facts["kernels"] = sorted(twice.seen)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
