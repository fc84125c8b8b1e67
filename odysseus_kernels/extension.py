"""The optional compiled extension ``odysseus_kernels._C`` (``csrc/``)."""
from __future__ import annotations

import functools
import warnings


@functools.lru_cache(maxsize=None)
def _load():
    try:
        from . import _C  # noqa: F401  (registers torch.ops.odysseus_kernels.*)
    except ImportError as e:
        warnings.warn(f"odysseus_kernels: compiled extension not available ({e}); "
                      "using the Python/Triton paths", stacklevel=3)
        return False
    return True


def extension_available() -> bool:
    """True when the compiled extension is importable (its ops are in ``torch.ops.odysseus_kernels``).
    Says why once (a warning) when it is not."""
    return _load()
