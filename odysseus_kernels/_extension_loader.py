"""Loading the optional compiled extension ``odysseus_kernels._C``: a leaf module.

It imports nothing else from the package, so both :mod:`odysseus_kernels.extension` (the public
switch) and :mod:`odysseus_kernels.kernels.extension_ops` (the wrappers, fake kernels and autograd)
import it without importing each other. Code that must run once the library is loaded (registering
the fake kernels) subscribes with :func:`when_loaded`.
"""
from __future__ import annotations

import functools
import warnings

import torch

_on_load = []  # callbacks run once the library is loaded
_loaded = False


def when_loaded(fn) -> None:
    """Run ``fn()`` once the extension is loaded: now if it already is, else right after loading."""
    if _loaded:
        fn()
    else:
        _on_load.append(fn)


@functools.lru_cache(maxsize=None)
def _load() -> bool:
    global _loaded
    try:
        from . import _C  # noqa: F401  (loading the library registers torch.ops.odysseus_kernels.*)
    except (ImportError, OSError) as e:  # OSError: a library built against another torch/CUDA
        warnings.warn(f"odysseus_kernels: compiled extension not available ({e}); "
                      "using the Python/Triton paths", stacklevel=3)
        return False
    _loaded = True
    for fn in _on_load:
        fn()
    _on_load.clear()
    return True


# A constant to torch.compile: wrappers check availability while being traced, and tracing into the
# import would be both slow and a graph break.
@torch.compiler.assume_constant_result
def extension_available() -> bool:
    """True when the compiled extension is importable (its ops are in ``torch.ops.odysseus_kernels``).

    Loads it on the first call and says why once (a warning) when it is not available.

    Returns:
        bool.
    Example:
        >>> import odysseus_kernels as ok
        >>> ok.extension_available()
        True
    """
    return _load()
