"""Combination of the per-rank LASP-2 states gathered by the single AllGather."""
from __future__ import annotations

import torch

from ...extension import use_extension


def state_scan(states: torch.Tensor, chunk_log_decay: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """Exclusive decayed prefix (``reverse=False``) or suffix (``reverse=True``) of per-rank states.

    Args:
        states: ``[W, B, H, Dk, Dv]`` (fp32/fp64), rank order.
        chunk_log_decay: ``[H]`` log-decay of one whole rank chunk (``seq_local * log lambda``), or
            ``None`` for no decay.
    Returns:
        ``[W, B, H, Dk, Dv]``: ``S_t = sum_{j<t} a^(t-1-j) M_j`` (prefix) or
        ``R_t = sum_{j>t} a^(j-1-t) M_j`` (suffix), ``a = exp(chunk_log_decay)``.
    Uses the compiled extension's kernel when available (``ok.extension_available()``).
    """
    if states.dtype in (torch.float32, torch.float64) and states.device.type in ("cpu", "cuda") and use_extension():
        from ..extension_ops import linear_attention_state_scan

        ld = chunk_log_decay.to(states.dtype) if chunk_log_decay is not None else states.new_zeros(states.shape[2])
        return linear_attention_state_scan(states, ld, reverse)
    w = states.shape[0]
    a = None if chunk_log_decay is None else torch.exp(chunk_log_decay.to(states.dtype)).view(1, -1, 1, 1)
    out = torch.zeros_like(states)
    run = torch.zeros_like(states[0])
    order = range(w - 1, -1, -1) if reverse else range(w)
    for t in order:
        out[t] = run
        run = (run if a is None else run * a) + states[t]
    return out
