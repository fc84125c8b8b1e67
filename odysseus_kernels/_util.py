"""Tiny helpers shared across layers (no torch.distributed; torch only inside :func:`acc_dtype`, so the
cost model can import this module without torch)."""
from __future__ import annotations

import contextlib
import threading


class ScopedFlag:
    """A per-thread on/off flag set for the duration of a ``with`` block (nestable)."""

    def __init__(self):
        self._state = threading.local()

    @property
    def on(self) -> bool:
        return getattr(self._state, "on", False)

    @contextlib.contextmanager
    def enabled(self):
        prev = self.on
        self._state.on = True
        try:
            yield
        finally:
            self._state.on = prev


def layer_is_linear(linear_layers: str, hybrid_ratio: int, layer: int) -> bool:
    """Whether ``layer`` uses linear attention: ``"all"``, ``"none"``, or ``"hybrid"`` with
    ``hybrid_ratio`` linear layers per softmax layer (ratio 3: layers 0-2 linear, 3 softmax, ...)."""
    if linear_layers == "all":
        return True
    if linear_layers == "hybrid":
        return layer % (hybrid_ratio + 1) != hybrid_ratio
    return False


def acc_dtype(dtype):
    """Accumulator dtype of an input ``torch.dtype``: fp32 for fp32/fp16/bf16 inputs, fp64 for fp64
    inputs (exact oracles). The one definition: every op and reference imports it from here."""
    import torch  # already loaded by any caller holding a torch.dtype; not at module import (see above)

    return torch.float64 if dtype == torch.float64 else torch.float32


def as_dtype(t, dtype):
    """``t`` in ``dtype``; ``t`` itself when it already is, without a call (``Tensor.to`` costs about a
    microsecond of host time even when it has nothing to do: these run several times per op call)."""
    return t if t.dtype == dtype else t.to(dtype)
