"""Loading the optional compiled extension ``odysseus_kernels._C``: a leaf module.

It imports nothing else from the package but the leaf ``_util``, so :mod:`odysseus_kernels.extension`
(the public face), :mod:`odysseus_kernels.kernels.extension_ops` (the wrappers, fake kernels and
autograd) and the kernels that call the extension import it without importing each other. Code that
must run once the library is loaded (registering the fake kernels) subscribes with :func:`when_loaded`.
The switch :func:`extension_disabled` / :func:`use_extension` lives here too.
"""
from __future__ import annotations

import functools
import warnings

import torch

from ._util import ScopedFlag

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


@functools.lru_cache(maxsize=None)
def _registered_cuda_kernels() -> bool:
    # Every op registers its CUDA kernel under the same ODYSSEUS_WITH_CUDA (csrc/<op>.cpp), so one op tells
    # for all. The dispatcher query is private: a torch without it gets the Python/Triton paths on CUDA.
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("odysseus_kernels::merge_attention_states_", "CUDA")
    except (AttributeError, RuntimeError):
        return False


@torch.compiler.assume_constant_result
def extension_has_cuda() -> bool:
    """True when the extension is available and has its CUDA kernels.

    setup.py builds CPU kernels only when ``nvcc`` is missing; that extension is available, but its ops
    raise ``NotImplementedError`` on CUDA tensors. So code that routes CUDA tensors to the extension
    asks this, and CPU tensors :func:`extension_available`.

    Returns:
        bool.
    """
    return extension_available() and _registered_cuda_kernels()


_disabled = ScopedFlag()


def extension_disabled():
    """``with extension_disabled():`` the package's ops take their Python/Triton paths even when
    the extension is available (to compare both paths, or to rule the extension out)."""
    return _disabled.enabled()


def use_extension(device: torch.device | None = None) -> bool:
    """Whether ops should call the extension now: available and not disabled, and for tensors on a CUDA
    ``device`` also built with its CUDA kernels (:func:`extension_has_cuda`)."""
    return (not _disabled.on and extension_available()
            and (device is None or device.type != "cuda" or extension_has_cuda()))
