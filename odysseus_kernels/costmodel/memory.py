"""Memory per rank: weights, gradients and optimizer states (replicated, TP-split, ZeRO-3, or FSDP
with the whole model as one unit), activations saved for backward, and transient buffers.

Peak = static (weights, gradients, optimizer, gathered FSDP weights) + saved activations + the
largest transient (communication buffers, gathered weights/inputs, unsharded gradients, logits),
the dynamic part inflated by the caching allocator's fragmentation
(``TrainConfig.allocator_overhead``). Transients are added, not overlapped with activations:
PyTorch's caching allocator rarely hands a large freed segment back to many small activations,
which is what the Odysseus-Transformer table's reserved-vs-allocated gaps show.

Saved activations per local token per layer (bytes, ``b`` per element):

- fused layer: two RMSNorm inputs ``2 (b d + 4)``; attention q, k, v, out ``b (2 d_q + 2 d_kv)`` and
  lse ``4 H``; SwiGLU gate, up, down-input ``3 b i``;
- eager (Hugging Face) layer, counted from its autograd graph: RMSNorm keeps its fp32 upcast and the
  normalised bf16 tensor ``(4 + b) d`` each; the attention output is copied once more
  (``b d_q``, the contiguous reshape before ``o_proj``); SwiGLU keeps gate, silu(gate), up and the
  product ``4 b i``;
- linear-attention layers keep q, k, v, out (no lse) and, with an output gate, ``2 b d_q`` more;
- per strategy: TP-SP / Odysseus attention save the gathered GEMM inputs (``n b d`` each) unless
  they re-gather (``Impl.tp_save_gathered=False``); all-gather-KV saves the gathered K, V (``2 (n-1) b d_kv``);
  RSA saves its score rows ``H L b``; LASP-2 saves the gathered states (``n`` of them) per layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import ModelConfig, TrainConfig
from ..ops.attention.allgather_kv import allgather_kv_comm_bytes
from .impl import Impl
from .strategies import lasp1_state_bytes, lasp2_state_bytes, ring_transfers, token_ring_wire, usp_degrees

GIB = 2**30


@dataclass
class MemoryBreakdown:
    """Bytes per rank. ``peak`` is what must fit in ``HardwareProfile.usable_bytes``."""

    params: float
    grads: float
    optimizer: float
    gathered_weights: float
    activations: float
    transient: float
    logits: float
    allocator: float

    @property
    def static(self) -> float:
        return self.params + self.grads + self.optimizer + self.gathered_weights

    @property
    def peak(self) -> float:
        return self.static + self.activations + self.transient + self.logits + self.allocator

    def as_gib(self) -> dict:
        d = {k: v / GIB for k, v in asdict(self).items()}
        d["peak"] = self.peak / GIB
        return d


def _placement(strategy: str, weights: str | None, odysseus_mlp: str) -> dict[str, str]:
    """Placement of each layer tensor group: ``attn`` (q/k/v/o/gate), ``mlp``, ``norm``, ``embed``."""
    if strategy == "tp_sp":
        return {"attn": "tp", "mlp": "tp", "norm": "replicated", "embed": "replicated"}
    if strategy == "odysseus":
        return {"attn": "tp", "mlp": "zero3" if odysseus_mlp == "zero3" else "replicated", "norm": "replicated",
                "embed": "replicated"}
    w = weights or "replicated"
    return {"attn": w, "mlp": w, "norm": w, "embed": w}


def _group_params(model: ModelConfig) -> dict[str, float]:
    g = {"attn": 0.0, "mlp": 0.0, "norm": 0.0}
    for kind in model.layer_kinds():
        for name, v in model.layer_params(kind).items():
            mlp = name in ("gate_proj", "up_proj", "down_proj")
            g["norm" if name.endswith("norm") else "mlp" if mlp else "attn"] += v
    g["embed"] = float(model.embedding_params())
    return g


def activation_bytes_per_token(strategy: str, model: ModelConfig, kind: str, b: int, n: int, train: TrainConfig,
                               impl: Impl, seq_len: int) -> float:
    """Saved activation bytes per local token of one layer (see the module doc)."""
    d, dq, dkv, i, h = model.hidden, model.q_dim, model.kv_dim, model.intermediate, model.heads
    eager = train.activations == "eager"
    norms = 2 * ((4 + b) * d if eager else b * d + 4)
    core = b * (2 * dq + 2 * dkv) + (4 * h if kind == "softmax" else 0) + (b * dq if eager else 0)
    if kind == "linear":
        core += (2 * b * dq if model.attn_out_gate else 0) + (b * (dq + dkv) if eager else 0)
    mlp = (4 if eager else 3) * b * i
    extra = 0.0
    if strategy in ("tp_sp", "odysseus") and impl.tp_save_gathered:
        extra += n * b * d * (2 if strategy == "tp_sp" else 1)
    s = strategy
    if s == "lasp2h":
        s = "allgather_kv" if kind == "softmax" else "lasp2"
    if s == "allgather_kv":  # the gathered K/V are kept for backward
        extra += 2 * (n - 1) * b * dkv
    if s == "rsa":
        extra += h * seq_len * b
    return norms + core + mlp + extra


def memory(strategy: str, model: ModelConfig, seq_len: int, batch: int, n: int, dp: int, b: int,
           train: TrainConfig, impl: Impl, *, weights: str | None = None, odysseus_mlp: str = "zero3",
           ulysses_degree: int | None = None) -> MemoryBreakdown:
    """Per-rank memory of one training step of ``strategy``.

    Args:
        strategy, model, seq_len, batch: as in :func:`~.strategies.comm_volume`.
        n, dp: SP degree and data-parallel replicas (optimizer states shard over ``n * dp``).
        b: bytes per activation element; train, impl: :class:`TrainConfig`, :class:`Impl`.
        weights, odysseus_mlp, ulysses_degree: weight placement and USP degree.

    Returns:
        :class:`MemoryBreakdown` in bytes (``.peak``, ``.as_gib()``).

    Example::

        >>> from odysseus_kernels.costmodel import ModelConfig, TrainConfig, OURS
        >>> m = memory("tp_sp", ModelConfig.preset("llama2-7b"), 32768, 1, 8, 1, 2, TrainConfig(), OURS)
        >>> round(m.params / 2**30, 1)   # bf16 weights split 8 ways, norms and embeddings replicated
        2.0
    """
    pb = train.param_bytes or b
    gb = train.grad_bytes or pb
    place = _placement(strategy, weights, odysseus_mlp)
    groups = _group_params(model)
    params = grads = opt = gathered = 0.0
    largest_layer = max(sum(model.layer_params(k).values()) for k in set(model.layer_kinds()))
    for g, count in groups.items():
        p = place[g]
        share = count / n if p in ("tp", "zero3", "fsdp_model") else count
        params += share * pb
        grads += share * gb
        # ZeRO-1: states sharded over every GPU; otherwise they follow the weights
        opt += (count / (n * dp) if train.shard_optimizer else share) * train.optimizer_bytes
        if p == "fsdp_model":
            gathered += count * pb
    tokens = batch * seq_len / n
    act = 0.0
    per_layer = []
    for kind in model.layer_kinds():
        per_tok = activation_bytes_per_token(strategy, model, kind, b, n, train, impl, seq_len)
        layer_act = per_tok * tokens
        if strategy in ("lasp2", "lasp2h", "lasp1") and kind == "linear":
            state = lasp1_state_bytes(model, batch) if strategy == "lasp1" else lasp2_state_bytes(model, batch, b)
            layer_act += n * state
        per_layer.append(layer_act)
        act += layer_act if train.recompute == "none" else tokens * model.hidden * b
    if train.recompute == "full":
        act += max(per_layer)  # one layer recomputed at a time
    transient = _transient(strategy, model, tokens, seq_len, batch, n, b, pb, impl, place, largest_layer,
                           ulysses_degree)
    logits = tokens * model.vocab * train.logits_bytes
    alloc = train.allocator_overhead * (act + transient + logits)
    return MemoryBreakdown(params, grads, opt, gathered, act, transient, logits, alloc)


def _transient(strategy, model, tokens, seq_len, batch, n, b, pb, impl, place, largest_layer, ulysses_degree) -> float:
    """The largest buffer alive only during part of the step."""
    d, dq, dkv = model.hidden, model.q_dim, model.kv_dim
    kv = tokens * dkv * b
    cands = [0.0]
    if strategy in ("ring", "zigzag", "rsa"):
        t = ring_transfers(max(n, 2), batch, seq_len // n, model.kv_heads, model.head_dim, b, impl)
        cands.append(2 * t["kv"] + 2 * t["dkv"] + tokens * dq * 4)  # double-buffered K/V and dK/dV, fp32 out
    if strategy == "usp":
        u, _ = usp_degrees(n, model.heads, model.kv_heads, ulysses_degree)
        cands.append(tokens * (2 * dq + 2 * dkv) * b + 4 * kv + tokens * dq * 4)
    if strategy == "token_ring":
        w = token_ring_wire(model, b, impl)["forward"]  # per row (all heads): query out, partial back
        cands.append(2 * tokens * (w["query"] + w["result"]) + tokens * dq * 4)
    if strategy == "ulysses":
        cands.append(tokens * (2 * dq + 2 * dkv) * b)
    if strategy in ("allgather_kv", "lasp2h"):  # gathered K, V and the full dK, dV before the reduce-scatter
        # dK, dV of one shard, in the wire format of the reduce-scatter
        grads = allgather_kv_comm_bytes(2, 1, tokens, model.kv_heads, model.head_dim, b)["backward"]
        cands.append(2 * n * kv + n * grads)
    if strategy == "rsa":
        cands.append(tokens * model.heads * seq_len * 4)  # fp32 score rows before the softmax
    if strategy in ("tp_sp", "odysseus"):
        cands.append(2 * n * tokens * d * b + tokens * model.intermediate * b)
    per_layer_weights = largest_layer * pb
    if "zero3" in place.values():
        cands.append(2 * per_layer_weights + per_layer_weights)  # two gathered layers (prefetch) + unsharded grads
    if "fsdp_model" in place.values():
        cands.append(model.params() * 4)  # the whole model's unsharded gradients, reduced in fp32
    return max(cands)


__all__ = ["GIB", "MemoryBreakdown", "activation_bytes_per_token", "memory"]
