"""Ring attention: K and V travel around the ring; every rank keeps its queries.

Forward (per rank, N ranks, C = L/N local tokens): at step t the rank holds the K/V of rank
``(r - t) mod N`` (fetched during step t-1, double-buffered) and merges the blocks that
:func:`~.blocks.plan_blocks` finds visible into fp32 running ``(out, lse)``. With the zigzag layout
every rank does the same causal work at every step.

Backward: K/V travel again; the fp32 dK/dV accumulator of each K/V shard travels with it, one hop
behind (it starts on the first rank that visits the shard and ends with one final hop to the owner,
N-1 hops in all), added to on each rank after its block gradient is computed, so the transfer
overlaps the compute. dQ accumulates locally in fp32.

Bytes received per rank (ledger kind ``p2p``), ``s_kv = B*C*H_kv*D*b`` for one of K or V:
forward ``2 (N-1) s_kv`` = 2 (N-1)/N * B L d_kv b; backward ``2 (N-1) s_kv`` (K, V) plus
``2 (N-1) B C H_kv D * 4`` (fp32 dK, dV) — exactly twice the forward volume for fp32 inputs.
"""
from __future__ import annotations

import torch

from ..._util import acc_dtype
from ...comm import group_info
from ..ring import Relay, Rotation
from .blocks import plan_blocks, ring_steps
from .common import (DEFAULT_LAYOUT, blocks_attention, blocks_backward, blocks_forward, empty_attention, fused_steps,
                     is_empty, scale_of, shard_positions, validated_layout)
from .scheduled import ScheduledAttention


class RingForward(Rotation):
    """Forward schedule: K/V packed as one ``[2, B, C, H_kv, D]`` payload rotating forward.

    With the Triton backend a step is one kernel launch: the whole local shard of queries against
    the visiting shard of keys (span positions as runtime data, tiles the mask hides skipped), merged
    into the fp32 ``(out, lse)`` inside the kernel (step 0 writes them: no fill). Other backends run
    the planned blocks of the step (:func:`~.blocks.plan_blocks`) and merge each."""

    def __init__(self, info, spans, q, k, v, *, mask, scale, backend, accumulators=True):
        super().__init__(info, torch.stack([k, v]))
        self.spans, self.mask = spans, mask
        self.q, self.scale, self.backend = q, scale, backend
        self.acc_dtype = acc_dtype(q.dtype)
        self.fused = fused_steps(backend, q)
        # a window that fits in fewer ranks stops the rotation early: fewer steps, fewer transfers
        self.steps = ring_steps(spans, mask)
        self._kv, self._visible, self._kpos = {}, {}, {}
        if not accumulators:  # the backward keeps no running (out, lse)
            return
        if self.fused:
            from ...kernels.attention.triton_attention import ShardKernels

            b, c, h, _ = q.shape
            self.kernels = ShardKernels(q, hk=k.shape[2], dv=v.shape[-1], softmax_scale=scale, causal=mask.causal,
                                        window=mask.window, q_pos=self.q_positions())
            self.out = torch.empty(b, c, h, v.shape[-1], dtype=self.acc_dtype, device=q.device)
            self.lse = torch.empty(b, h, c, dtype=self.acc_dtype, device=q.device)
        else:
            self.out = self.lse = None  # made by step 0 (blocks_attention)

    def blocks(self, t):
        return plan_blocks(self.spans[self.info.rank], self.spans[self.src(t)], self.mask)

    def q_positions(self):
        """Span positions of my queries (fused steps)."""
        return shard_positions(self.spans[self.info.rank], self.mask, self.q.device)

    def k_positions(self, t):
        """Span positions of the keys visiting at step ``t`` (fused steps; kept for the call)."""
        src = self.src(t)
        kp = self._kpos.get(src)
        if kp is None:
            kp = self._kpos[src] = shard_positions(self.spans[src], self.mask, self.q.device)
        return kp

    def kv(self, t):
        """``(k, v)`` views of step ``t``'s payload (made once per buffer; the entry keeps the buffer, so
        its id cannot be reused by another tensor while cached)."""
        p = self.payload(t)
        hit = self._kv.get(id(p))
        if hit is None or hit[0] is not p:
            hit = self._kv[id(p)] = (p, *p.unbind(0))
        return hit[1], hit[2]

    def visible(self, t) -> bool:
        vis = self._visible.get(t)
        if vis is None:
            vis = self._visible[t] = t == 0 or bool(self.blocks(t))
        return vis

    def compute(self, t, handle):
        k, v = self.kv(t)
        if not self.fused:
            blocks = self.blocks(t)
            if t == 0:  # step 0 makes the accumulators
                self.out, self.lse = blocks_attention(self.q, k, v, blocks, scale=self.scale, backend=self.backend,
                                                      mask=self.mask)
            else:
                blocks_forward(self.q, k, v, blocks, self.out, self.lse, scale=self.scale, backend=self.backend,
                               mask=self.mask)
        elif self.visible(t):
            self.kernels.fwd(k, v, self.out, self.lse, first=t == 0, k_pos=self.k_positions(t))


class RingBackward(RingForward):
    """Backward schedule: K/V fetched as in forward; the dK/dV accumulator of each shard travels one
    hop behind it (a :class:`~odysseus_kernels.ops.ring.Relay`) and ends on the shard's owner."""

    def __init__(self, info, spans, q, k, v, out, lse, dout, *, mask, scale, backend):
        super().__init__(info, spans, q, k, v, mask=mask, scale=scale, backend=backend, accumulators=False)
        self.o, self.lse_final, self.dout = out, lse, dout
        if self.fused:  # one preprocess launch; dQ written by step 0, accumulated in-kernel after
            from ...kernels.attention.triton_attention import ShardKernels, attention_delta_triton

            self.delta = attention_delta_triton(out, dout)  # [B, H, C] fp32
            self.dq = torch.empty(q.shape, dtype=self.acc_dtype, device=q.device)
            self.kernels = ShardKernels(q, hk=k.shape[2], dv=v.shape[-1], softmax_scale=scale, causal=mask.causal,
                                        window=mask.window, q_pos=self.q_positions(), dout=dout, lse=lse,
                                        delta=self.delta)
        else:
            self.delta = None  # each block takes rowsum(dout * out) of its rows from out (cpu_flash does anyway)
            self.dq = torch.zeros(q.shape, dtype=self.acc_dtype, device=q.device)
        self.relay = Relay(info, self.steps)  # [2, B, C, H_kv, D] accumulators of dK/dV
        self.returns = self.relay.returns

    def compute(self, t, handle):
        if self.fused:
            return self._compute_fused(t, handle)
        k, v = self.kv(t)
        part = torch.zeros((2,) + tuple(k.shape), dtype=self.acc_dtype, device=k.device)
        blocks_backward(self.dout, self.q, k, v, self.o, self.lse_final, self.delta, self.blocks(t), self.dq,
                        part[0], part[1], scale=self.scale, backend=self.backend, mask=self.mask)
        self.relay.add(t, part, handle)

    def _compute_fused(self, t, handle):
        """Two launches: dQ (accumulated in-kernel) first, then, once the travelling dK/dV accumulator
        of this shard has arrived, dK/dV added into it in-kernel (step 0: my own shard's; step 1: a
        fresh accumulator, written, not added)."""
        k, v = self.kv(t)
        visible = self.visible(t)
        if visible:
            kp = self.k_positions(t)
            self.kernels.dq(k, v, self.dq, first=t == 0, k_pos=kp)
        new = torch.empty if visible else torch.zeros
        part = self.relay.buffer(t, handle, lambda: new((2,) + k.shape, dtype=self.acc_dtype, device=k.device))
        if visible:
            self.kernels.dkdv(k, v, part[0], part[1], first=t <= 1, k_pos=kp)

    def finish(self):
        self.relay.finish()

    def grads(self):
        own = self.relay.result
        return self.dq, own[0], own[1]


def ring_comm_bytes(world: int, batch: int, seq_local: int, kv_heads: int, head_dim: int, elem_bytes: int,
                    steps: int | None = None) -> dict:
    """Closed-form bytes received per rank (ledger kind ``p2p``) for forward and backward; ``steps``
    (default: the full ring, ``world``) is :func:`~.blocks.ring_steps` for a window."""
    s_kv = batch * seq_local * kv_heads * head_dim
    hops = (world if steps is None else steps) - 1
    fwd = 2 * hops * s_kv * elem_bytes
    acc_bytes = 8 if elem_bytes == 8 else 4  # dK/dV travel as fp32 accumulators (fp64 for fp64)
    return {"forward": fwd, "backward": fwd + 2 * hops * s_kv * acc_bytes}


def ring_attention_spans(q, k, v, *, info, spans, mask, scale, backend="auto"):
    """Ring attention over arbitrary shards (``spans[r]``: rank r's ``(global_start, length)``
    spans). Validation is the caller's; used by :func:`ring_attention` and USP. Returns ``(out, lse)``."""
    return ScheduledAttention.apply(q, k, v, RingForward, RingBackward, info, spans, mask, scale, backend)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None, causal: bool = False,
                   softmax_scale: float | None = None, layout: str = DEFAULT_LAYOUT,
                   window_size: tuple[int, int] = (-1, -1), cu_seqlens=None, return_lse: bool = False,
                   backend: str = "auto"):
    """Ring attention: exact attention over the sequence sharded across ``group``, K/V circulating.

    Args:
        q: ``[B, C, H, D]`` this rank's queries (``C = L / N`` tokens in ``layout``).
        k, v: ``[B, C, H_kv, D]`` (``H % H_kv == 0``; only the ``H_kv`` heads travel).
        group: the sequence-parallel group (``None`` = default).
        causal: causal over the global sequence in its original token order.
        softmax_scale: default ``1/sqrt(D)``.
        layout: ``"contiguous"`` (the package default, :data:`~odysseus_kernels.ops.layout.DEFAULT_LAYOUT`,
            as for ``shard_sequence``) or ``"zigzag"`` (balanced causal work: use it for causal
            attention, and shard with the same layout) split of the (packed) stream, or
            ``"doc_zigzag"`` / ``"doc_contiguous"`` (every document split across the ranks; see
            :func:`~odysseus_kernels.ops.layout.layout_spans`).
        window_size: ``(left, right)`` sliding window in tokens (-1 = unbounded), exact at every position.
            When it fits in fewer ranks than the ring (contiguous layout), the rotation stops early
            and moves only what those steps need.
        cu_seqlens: global cumulative document lengths of a packed stream (list or int tensor,
            identical on every rank): attention stays within each document; span pairs in
            different documents are skipped.
        return_lse: also return the log-sum-exp of every row, ``[B, H, C]`` fp32 (fp64 for fp64 inputs;
            -inf for rows that see no key), as flash-attn's ``return_attn_probs`` / ring-flash-attn.
        backend: block-kernel backend (``"auto"``: Triton on CUDA, torch elsewhere).
    Returns:
        ``[B, C, H, D]`` in ``q.dtype``, this rank's rows of the global attention output, or
        ``(out, lse)`` with ``return_lse=True``. Empty inputs (batch 0, zero-length shards) give empty
        outputs and gradients without communicating.
    Communication (per rank, received): forward ``2 (N-1)/N * B L H_kv D`` elements; backward
    the same again plus the fp32 dK/dV (see :func:`ring_comm_bytes`).
    Example::

        # torchrun --nproc-per-node 4 example.py
        q, k, v = (ok.shard_sequence(t, layout="zigzag") for t in (q_full, k_full, v_full))
        out = ok.ring_attention(q, k, v, causal=True, layout="zigzag")
    """
    info = group_info(group)
    spans, mask = validated_layout("ring_attention", info, q, k, v, layout=layout, causal=causal,
                                   softmax_scale=softmax_scale, window_size=window_size, cu_seqlens=cu_seqlens,
                                   same_kv_shape=True)
    if is_empty(q, k):
        return empty_attention(q, k, v, return_lse)
    out, lse = ring_attention_spans(q, k, v, info=info, spans=spans, mask=mask, scale=scale_of(q, softmax_scale),
                                    backend=backend)
    return (out, lse) if return_lse else out
