"""Prepared Triton launches: a kernel launched again and again with the same constexprs (a ring's
steps) skips Triton's per-launch argument binding once the JIT has chosen its compiled kernel (#18).

``kernel[grid](*args, **constexprs)`` runs ``JITFunction.run`` on every launch: before it finds the
compiled kernel and calls its launcher, it binds and specializes every argument and builds a cache
key (about 0.4 us per argument on our 2-core CPU machine: 16-22 us for each of the attention kernels'
45-56 arguments, more than the package's own host work per ring step; 16-54 us per launch with the
rest of ``JITFunction.run``, measured against a direct launch). :class:`PreparedLaunch` keeps
the compiled kernel the JIT launched for each argument *fingerprint* and launches that kernel directly
(its launcher, with the JIT's own argument tuple) when a later launch has the same fingerprint. The
fingerprint holds all a launch is specialized on: each tensor's dtype and address modulo 16, each
scalar's type, each specialized integer's value (finer than the JIT, which keys on equal-to-1,
divisible-by-16 and range: a new value, such as a batch stride at a new sequence length, costs one
launch through the JIT), each unspecialized integer's 32-bit range (else its value), the current
device and the JIT's debug and instrumentation options; so equal fingerprints select the same compiled
kernel (tested against Triton's own binder, both Tritons). The first launch of each fingerprint goes
through the JIT (it compiles or finds the kernel, loads it, checks its resources, launches it).

Every launch goes through the JIT when the kernel is interpreted (``TRITON_INTERPRET=1``), when a
launch hook or a pre-run hook is installed (profilers), when the grid is a callable, or after
``set_triton_launch("jit")`` (process-wide; ``"direct"`` is the default). One check of the JIT's is
not repeated by a direct launch: that the global values the kernel read when it compiled are unchanged
(the package's kernels read none that change).
"""
from __future__ import annotations

import contextlib

import torch
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

TRITON_LAUNCH_MODES = ("direct", "jit")
_mode = "direct"
MAX_KERNELS = 64  # fingerprints kept per prepared launch (then forgotten all at once and relearnt)


def set_triton_launch(mode: str) -> None:
    """Process-wide: ``"direct"`` (the default: a repeated launch skips Triton's argument binding, see
    the module docstring) or ``"jit"`` (every launch through ``JITFunction.run``)."""
    global _mode
    if mode not in TRITON_LAUNCH_MODES:
        raise ValueError(f"set_triton_launch: mode must be one of {TRITON_LAUNCH_MODES}, got {mode!r}")
    _mode = mode


def get_triton_launch() -> str:
    """The launch mode in effect (``"direct"`` or ``"jit"``)."""
    return _mode


@contextlib.contextmanager
def triton_launch(mode: str):
    """``with ok.triton_launch("jit"):`` the process-wide launch mode for the block (the previous mode
    is restored after, also when the block raises)."""
    global _mode
    prev = _mode
    set_triton_launch(mode)
    try:
        yield mode
    finally:
        _mode = prev


def _idle(hook) -> bool:
    """No hook to call: ``None`` or an empty ``HookChain`` (Triton >= 3.5 keeps a chain even when empty)."""
    return hook is None or not getattr(hook, "calls", (hook,))


def _hooks_idle(fn) -> bool:
    rt = knobs.runtime
    return (_idle(rt.launch_enter_hook) and _idle(rt.launch_exit_hook) and not fn.pre_run_hooks
            and getattr(rt, "add_stages_inspection_hook", None) is None)


def fingerprint_function(params, args, *, with_args: bool = False):
    """``fingerprint(args) -> tuple | None`` for launches whose arguments have the kinds of ``args`` (a
    tensor or a Python scalar at each position; ``params`` are the kernel's ``KernelParam`` in order):
    the tuple holds what Triton specializes the launch on (module docstring) and whether each tensor is
    on a GPU; ``None`` when a scalar position holds another type than in ``args`` (such a launch goes
    through the JIT). Raises ``AttributeError`` when a tensor position holds something else,
    ``ValueError`` when ``args`` has a position that is neither (a ``None``, a tuple): no fingerprint is
    made for such kernels.

    ``with_args``: the function returns ``(fingerprint, launcher_args)`` instead, ``launcher_args``
    being ``args`` with each tensor replaced by its address (``data_ptr()``, read once for both). Triton's
    launcher takes an integer address as it is, where for a tensor it calls ``data_ptr()`` and asks the
    driver whether the address is device memory (``cuPointerGetAttribute``, one driver call per tensor
    argument, 13 per attention launch): the JIT launch that first ran a fingerprint made that check,
    and the fingerprint keeps a host tensor (``is_cuda``) from sharing a GPU tensor's kernel."""
    tensors, scalars, types, ptrs, launch = [], [], [], [], []
    for i, (p, a) in enumerate(zip(params, args)):
        if isinstance(a, torch.Tensor) and not p.is_constexpr:
            ptrs.append(f"    p{i} = a[{i}].data_ptr()\n")
            tensors.append(f"a[{i}].dtype, p{i} & 15, a[{i}].is_cuda")
            launch.append(f"p{i}")
        elif type(a) in (int, float, bool):
            types.append(f"type(a[{i}])")  # a float is always fp32 and a bool u1: their type is their key
            if p.is_constexpr:
                scalars.append(f"a[{i}]")
            elif type(a) is int and not p.do_not_specialize:  # by value (finer than the JIT's 1 / %16 / range)
                scalars.append(f"a[{i}]")
            elif type(a) is int:  # an unspecialized integer is typed by range only (i32; else its value)
                scalars.append(f"(-0x80000000 <= a[{i}] <= 0x7fffffff or a[{i}])")
            launch.append(f"a[{i}]")
        else:
            raise ValueError(f"argument {p.name}: a {type(a).__name__}, neither a tensor nor a Python scalar")
    want = tuple(type(a) for a in args if not isinstance(a, torch.Tensor))
    key = f"({', '.join(tensors + scalars)}{',' if tensors or scalars else ''})"
    ret = f"{key}, ({', '.join(launch)}{',' if launch else ''})" if with_args else key
    src = (f"def fingerprint(a):\n"
           f"    if len(a) != {len(args)} or ({', '.join(types)}{',' if types else ''}) != want:\n"
           f"        return None\n"
           f"{''.join(ptrs)}"
           f"    return {ret}\n")
    scope = {"want": want}
    exec(compile(src, f"<fingerprint of {len(args)} arguments>", "exec"), scope)
    return scope["fingerprint"]


class PreparedLaunch:
    """Launches of one ``@triton.jit`` ``fn`` with fixed keyword arguments ``kwargs`` (its constexprs
    and launch options such as ``num_warps``): ``launch(grid, args)`` is ``fn[grid](*args, **kwargs)``,
    directly when the JIT already launched the kernel for ``args``' fingerprint (module docstring).
    ``args`` are the kernel's leading arguments, positional; the parameters after them must be
    constexprs, given in ``kwargs`` or left to their defaults. Get one per ``(fn, kwargs)`` with
    :func:`prepared` (shared, so its compiled kernels serve every caller)."""

    def __init__(self, fn, kwargs: dict):
        self.fn, self.kwargs = fn, dict(kwargs)
        self.kernels: dict = {}  # fingerprint key -> the CompiledKernel the JIT launched for it
        self.jit_launches = 0  # launches that went through JITFunction.run (tests and benchmarks count them)
        self._eligible = isinstance(fn, JITFunction)  # an interpreted kernel (TRITON_INTERPRET=1) has no launcher
        self._fingerprint = self._tail = None

    def _setup(self, args) -> bool:
        """On the first launch: the fingerprint function and the constexpr tail of the launcher's
        arguments; ``False`` (every launch through the JIT) when ``args`` does not allow it (more
        arguments than parameters, a ``*args`` parameter, a runtime parameter left out, an argument that
        is neither a tensor nor a Python scalar)."""
        params = self.fn.params
        if len(args) > len(params) or any(q.kind is q.VAR_POSITIONAL for q in self.fn.signature.parameters.values()):
            return False
        tail = []
        for p in params[len(args):]:
            if not p.is_constexpr:
                return False
            if p.name in self.kwargs:
                tail.append(self.kwargs[p.name])
            elif p.has_default:
                tail.append(p.default)
            else:
                return False
        try:
            self._fingerprint = fingerprint_function(params, args, with_args=True)
        except ValueError:
            return False
        self._tail = tuple(tail)
        return True

    def _key(self, args, drv):
        """``(key, launcher_args)`` of ``args`` (:func:`fingerprint_function`), or ``None``: through the JIT."""
        try:
            fp = self._fingerprint(args)
        except AttributeError:  # a tensor position holds something else
            return None
        if fp is None:
            return None
        return (drv.get_current_device(), knobs.runtime.debug, knobs.compilation.instrumentation_mode, fp[0]), fp[1]

    def __call__(self, grid, args: tuple):
        key = None
        if self._eligible and _mode == "direct" and not callable(grid) and _hooks_idle(self.fn):
            if self._tail is None and not self._setup(args):
                self._eligible = False
            else:
                drv = driver.active
                keyed = self._key(args, drv)
                if keyed is not None:
                    key, launcher_args = keyed
                    k = self.kernels.get(key)
                    if k is not None:
                        n = len(grid)
                        k.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1,
                              drv.get_current_stream(key[0]), k.function, k.packed_metadata, None, None, None,
                              *launcher_args, *self._tail)
                        return k
        self.jit_launches += 1
        k = self.fn[grid](*args, **self.kwargs)
        if key is not None and getattr(k, "function", None) is not None:
            if len(self.kernels) >= MAX_KERNELS:  # bounded: start over (values seen again relearn at one JIT launch each)
                self.kernels.clear()
            self.kernels[key] = k
        return k


_PREPARED: dict = {}


def prepared(fn, **kwargs) -> PreparedLaunch:
    """The :class:`PreparedLaunch` of ``fn`` with ``kwargs`` (hashable values), one per process."""
    key = (fn, tuple(sorted(kwargs.items())))
    pl = _PREPARED.get(key)
    if pl is None:
        pl = _PREPARED[key] = PreparedLaunch(fn, kwargs)
    return pl


def jit_launches() -> int:
    """Launches of all prepared launches so far that went through ``JITFunction.run`` (a warm ring
    call in the default mode adds none)."""
    return sum(pl.jit_launches for pl in list(_PREPARED.values()))
