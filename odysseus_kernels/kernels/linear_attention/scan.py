"""Combination of the per-rank LASP-2 states gathered by the single AllGather.

This is the one function that combines gathered states (forward and backward, causal and not);
the compiled extension's ``torch.ops.odysseus_kernels.linear_attention_state_scan`` implements the
same semantics and is used when available.
"""
from __future__ import annotations

import torch

from ..._extension_loader import use_extension


def state_scan(states: torch.Tensor, chunk_log_decay: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """Exclusive decayed prefix (``reverse=False``) or suffix (``reverse=True``) of per-rank states.

    Args:
        states: ``[W, B, H, Dk, Dv]`` fp32 (or fp64), one state ``M_j`` per rank, rank order.
        chunk_log_decay: the log-decay across one whole rank chunk: ``[H]`` the same for every rank
            (``seq_local * g_gamma``; zeros = no decay), ``[W, B, H]`` per rank and batch (the sum of
            each shard's per-token ``g``), or ``None`` for no decay. Cast to ``states.dtype``.
        reverse: suffix instead of prefix.
    Returns:
        ``[W, B, H, Dk, Dv]`` in ``states.dtype``: with ``a_j = exp(chunk_log_decay[j])``,
        ``S_t = sum_{j<t} (prod_{j<m<t} a_m) M_j`` (prefix; ``S_(t+1) = a_t S_t + M_t``) or
        ``R_t = sum_{j>t} (prod_{t<m<j} a_m) M_j`` (suffix; ``R_(t-1) = a_t R_t + M_t``); with a
        per-head ``[H]`` decay these are ``sum_{j<t} a^(t-1-j) M_j`` and ``sum_{j>t} a^(j-1-t) M_j``.
        ``S_0`` (``R_(W-1)``) is zero.
    Example:
        >>> s = state_scan(torch.randn(4, 1, 8, 64, 64), torch.full((8,), -0.5), reverse=False)
        >>> torch.equal(s[0], torch.zeros(1, 8, 64, 64))
        True
    """
    per_rank = chunk_log_decay is not None and chunk_log_decay.dim() == 3
    if (not per_rank and states.dtype in (torch.float32, torch.float64) and states.device.type in ("cpu", "cuda")
            and use_extension(states.device)):
        from ..extension_ops import linear_attention_state_scan

        ld = chunk_log_decay.to(states.dtype) if chunk_log_decay is not None else states.new_zeros(states.shape[2])
        return linear_attention_state_scan(states, ld, reverse)
    w = states.shape[0]
    a = None
    if per_rank:
        a = torch.exp(chunk_log_decay.to(states.dtype)).view(w, states.shape[1], -1, 1, 1)
    elif chunk_log_decay is not None:
        a = torch.exp(chunk_log_decay.to(states.dtype)).view(1, 1, -1, 1, 1).expand(w, 1, -1, 1, 1)
    out = torch.zeros_like(states)
    run = torch.zeros_like(states[0])
    order = range(w - 1, -1, -1) if reverse else range(w)
    for t in order:
        out[t] = run
        run = (run if a is None else run * a[t]) + states[t]
    return out
