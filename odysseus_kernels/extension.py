"""The optional compiled extension ``odysseus_kernels._C`` (``csrc/``).

Built by ``pip install`` when a C++ compiler is there (CUDA kernels too when torch has CUDA and
``nvcc`` is found; ``ODYSSEUS_KERNELS_BUILD_EXT=0`` skips it). Its ops are in
``torch.ops.odysseus_kernels``; the wrappers, fake kernels and autograd are in
``odysseus_kernels.kernels.extension_ops``. Without it the package uses its Python/Triton paths.
Loading lives in the leaf module ``odysseus_kernels._extension_loader``.
"""
from __future__ import annotations

from ._extension_loader import extension_available, extension_disabled, use_extension  # noqa: F401  (re-exported)
# The wrappers subscribe their fake kernels/autograd to the loading: importing them here keeps
# "extension loaded" meaning "ready for torch.compile" whoever loads it first.
from .kernels import extension_ops  # noqa: F401,E402
