"""Where the Triton kernel tests run: on CPU tensors in the interpreter (``TRITON_INTERPRET=1``, which
tests/conftest.py sets when there is no GPU), else compiled on the GPU. Single-process kernel tests put
their tensors on :data:`DEVICE`; tests that can only run in the interpreter (CPU tensors through a
Triton kernel in gloo worker processes, the interpreter's launch config, its launch hooks) are
marked :data:`needs_interpreter`."""
import os

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cpu") if INTERPRETING or not torch.cuda.is_available() else torch.device("cuda")
needs_interpreter = pytest.mark.skipif(not INTERPRETING, reason="runs Triton kernels on CPU tensors: needs the "
                                                                "interpreter (TRITON_INTERPRET=1)")
