"""Attention whose forward and backward are ring schedules (:mod:`odysseus_kernels.ops.ring`):
the autograd glue shared by ring attention and TokenRing."""
from __future__ import annotations

import torch

from ..._util import as_dtype
from ..ring import run_schedule


class ScheduledAttention(torch.autograd.Function):
    """Attention whose forward and backward are schedules run by :func:`run_schedule`.

    ``fwd_cls(info, spans, q, k, v, mask=, scale=, backend=)`` leaves fp32 ``out``/``lse`` on the
    schedule; ``bwd_cls(info, spans, q, k, v, out, lse, dout, ...)`` exposes ``grads()`` ->
    ``(dq, dk, dv)``. Used by ring attention and TokenRing. Returns ``(out, lse)``: ``out`` in
    ``q.dtype``, ``lse`` ``[B, H, C]`` in the accumulator dtype (fp32; fp64 for fp64), not differentiable.
    """

    @staticmethod
    def forward(ctx, q, k, v, fwd_cls, bwd_cls, info, spans, mask, scale, backend):
        sched = run_schedule(fwd_cls(info, spans, q, k, v, mask=mask, scale=scale, backend=backend), info)
        out = as_dtype(sched.out, q.dtype)
        ctx.save_for_backward(q, k, v, out, sched.lse)
        ctx.opts = (bwd_cls, info, spans, mask, scale, backend)
        ctx.mark_non_differentiable(sched.lse)
        return out, sched.lse

    @staticmethod
    def backward(ctx, dout, _dlse=None):
        q, k, v, out, lse = ctx.saved_tensors
        bwd_cls, info, spans, mask, scale, backend = ctx.opts
        sched = run_schedule(bwd_cls(info, spans, q, k, v, out, lse, dout.contiguous(), mask=mask, scale=scale,
                                     backend=backend), info)
        dq, dk, dv = sched.grads()
        return (as_dtype(dq, q.dtype), as_dtype(dk, k.dtype), as_dtype(dv, v.dtype)) + (None,) * 7
