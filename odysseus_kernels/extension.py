"""The optional compiled extension ``odysseus_kernels._C`` (``csrc/``).

Built by ``pip install`` when a C++ compiler is there (CUDA kernels too when torch has CUDA and
``nvcc`` is found; ``ODYSSEUS_KERNELS_BUILD_EXT=0`` skips it). Its ops are in
``torch.ops.odysseus_kernels``; the wrappers, fake kernels and autograd are in
``odysseus_kernels.kernels.extension_ops``. Without it the package uses its Python/Triton paths.
"""
from __future__ import annotations

import functools
import warnings

import torch

from ._util import ScopedFlag


@functools.lru_cache(maxsize=None)
def _load() -> bool:
    try:
        from . import _C  # noqa: F401  (loading the library registers torch.ops.odysseus_kernels.*)
    except (ImportError, OSError) as e:  # OSError: a library built against another torch/CUDA
        warnings.warn(f"odysseus_kernels: compiled extension not available ({e}); "
                      "using the Python/Triton paths", stacklevel=3)
        return False
    from .kernels import extension_ops

    extension_ops._register()  # a no-op if importing extension_ops just did it
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


_disabled = ScopedFlag()


def extension_disabled():
    """``with extension_disabled():`` the package's ops take their Python/Triton paths even when
    the extension is available (to compare both paths, or to rule the extension out)."""
    return _disabled.enabled()


def use_extension() -> bool:
    """Whether ops should call the extension now: available and not disabled."""
    return not _disabled.on and extension_available()
