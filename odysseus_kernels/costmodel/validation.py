"""Predicted vs published: the cost model against results no one here can run.

Each :class:`Check` is one published quantity, the model's prediction for it, a tolerance and
whether the model is expected to hit it. :func:`validate` recomputes every prediction, and
``tests/test_costmodel.py`` fails when any check's status (hit/miss) changes, so a model change
that moves a prediction across its tolerance forces this table (and the README) to be revisited.
Misses are kept, with the reason, rather than tuned away.

Experiment set-ups are data taken from the papers (model, GPUs, batch, what code ran); the only
values read off a published measurement are marked as such (the LASP-2 step-time floor).
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig, TrainConfig, World
from .hardware import load_hardware
from .impl import OURS
from .published import PUBLISHED, Published
from .planner import predict
from .timing import attention_step

TOLERANCE = 0.15  # on ratios and times
MEMORY_TOLERANCE = 0.25  # on absolute peak memory (the allocator's behaviour is not modelled in detail)


@dataclass(frozen=True)
class Check:
    """One published number and its prediction."""

    experiment: str
    quantity: str
    published: object
    predicted: object
    tolerance: float | None  # relative; None: exact comparison (sets, names)
    expect: str  # "hit" or "miss"
    note: str = ""

    @property
    def rel_error(self) -> float | None:
        if self.tolerance is None:
            return None
        return self.predicted / self.published - 1.0

    @property
    def status(self) -> str:
        if self.tolerance is None:
            return "hit" if self.predicted == self.published else "miss"
        return "hit" if abs(self.rel_error) <= self.tolerance else "miss"


# ---- LASP-2 (Sun et al. 2025): Linear-Llama3-1B, 64 A100-80GB (8 per node, NVSwitch + HDR IB), batch 1 ----
# Table 6 of the paper: 2K tokens on 64 GPUs run at 1285 tokens/s, i.e. 1.594 s per step for
# almost no work. That floor (data loading, Megatron host overhead) is no part of SP; it is read
# off the paper's own table and added to every LASP-2-paper step so ratios compare like with like.
LASP2_STEP_FLOOR_S = 2048 / 1285
_LASP2_TRAIN = TrainConfig(optimizer="adam", shard_optimizer=False, step_overhead_s=LASP2_STEP_FLOOR_S)


def _lasp2_checks() -> list[Check]:
    m = ModelConfig.preset("linear-llama3-1b")
    w = World(64, 8)
    exp = "LASP-2 paper: Linear-Llama3-1B, 64x A100, batch 1"

    def t(strategy, L, impl=OURS):
        return predict(strategy, m, L, world=w, train=_LASP2_TRAIN, impl=impl).step_time_s

    out = []
    right = Published(name="ring, right product", linear_ring_right_product=True)
    for L, vs_lasp1, vs_ring in (("512K", 1.073, 1.178), ("2M", 1.152, 1.366)):
        base = t("lasp2", L)
        label = "2048K" if L == "2M" else L
        out.append(Check(exp, f"throughput LASP-2 / LASP-1 at {label}", vs_lasp1, t("lasp1", L) / base, TOLERANCE,
                         "hit",
                         "LASP-1's chain: N-1 P2P hops of the state, each followed by the sender's inter-chunk "
                         "product (its Algorithm 5/6), on the critical path"))
        out.append(Check(exp, f"throughput LASP-2 / Ring Attention at {label}", vs_ring, t("ring", L) / base, TOLERANCE,
                         "miss",
                         "the paper ran Ring Attention on linear attention 'in the standard-attention manner' "
                         "(left product, K/V rotation): quadratic work on the busiest rank plus 63 K/V transfers "
                         "per layer pass, which no A100 rate turns into an 18-37% gap. The published ratios "
                         "behave like a baseline that moves d_h x d_h states, as LASP-1 does"))
    out.append(Check(exp, "throughput LASP-2 / Ring Attention at 2048K, right-product reading", 1.366,
                     t("ring", "2M", right) / t("lasp2", "2M"), TOLERANCE, "miss",
                     "Ring with Q(K^T V) per visiting block still rotates 16 GB of K/V per layer pass over 25 GB/s "
                     "InfiniBand: communication-bound"))
    p = predict("lasp2", m, "1M", world=w, train=_LASP2_TRAIN)
    out.append(Check(exp, "LASP-2 tokens/s at 1024K (Table 6)", 442221, p.tokens_per_s, TOLERANCE, "hit",
                     "step = the Table 6 floor + predicted compute and exposed communication"))
    out.append(Check(exp, "LASP-2 peak GiB at 1024K (Table 6: 57.8 GB)", 57.8, p.peak_gib, MEMORY_TOLERANCE, "hit",
                     "unsharded Adam (the paper's Megatron run) + saved activations + logits"))
    out.append(Check(exp, "LASP-2 fits at 2048K on 64 GPUs (Table 6: OOM)", False,
                     predict("lasp2", m, "2M", world=w, train=_LASP2_TRAIN).fits, None, "hit",
                     "Fig. 3's 2048K point on 64 GPUs must have used a memory-saving setting the paper does not give"))
    return out


# ---- Odysseus-Transformer: Llama-2-7B, 8x A100-80GB NVLink, batch 1, seconds per 10 iterations ----
# What ran, inferred from the paper's own numbers (each inference is stated in the README):
# - allocated memory of 18.4 GB for TP-SP at 16K leaves no room for Adam states -> no optimizer;
# - Ring/Ulysses under PyTorch FSDP wrapping the whole model (bf16 params gathered for the whole
#   step, unsharded gradients reduced in fp32): their ~24 GB reserved-minus-allocated gap is the
#   fp32 gradient of 6.7B parameters, and the 17.4 GB intercept the gathered bf16 weights;
# - Ring is ring-flash-attn's ring_flash_attn_func (contiguous layout, eager merges);
# - Hugging Face eager layers; Megatron-style TP-SP (input re-gathered in backward), overlapped.
ODYSSEUS_TABLE = {  # seq: {method: (seconds per 10 iterations or None for OOM, reserved GB)}
    "16K": {"Ring": (10.37, 53.46), "Ulysses": (6.62, 53.46), "Odysseus": (6.74, 39.89),
            "Odysseus + ZeRO-3 MLP": (7.1, 20.84), "TP-SP": (6.86, 21.20)},
    "32K": {"Ring": (20.17, 63.42), "Ulysses": (13.76, 65.18), "Odysseus": (14.49, 53.10),
            "Odysseus + ZeRO-3 MLP": (14.99, 34.97), "TP-SP": (15.2, 35.30)},
    "64K": {"Ring": (None, None), "Ulysses": (None, None), "Odysseus": (52.93, 68.31),
            "Odysseus + ZeRO-3 MLP": (38.11, 68.31), "TP-SP": (39.43, 65.29)},
    "96K": {k: (None, None) for k in ("Ring", "Ulysses", "Odysseus", "Odysseus + ZeRO-3 MLP", "TP-SP")},
}
_ODY_TRAIN = TrainConfig(optimizer="none", activations="eager")
_ODY_METHODS = {
    "Ring": dict(strategy="ring", impl=PUBLISHED["ring-flash-attn"], weights="fsdp_model"),
    "Ulysses": dict(strategy="ulysses", impl=OURS, weights="fsdp_model"),
    "Odysseus": dict(strategy="odysseus", impl=PUBLISHED["megatron"], odysseus_mlp="replicated"),
    "Odysseus + ZeRO-3 MLP": dict(strategy="odysseus", impl=PUBLISHED["megatron"]),
    "TP-SP": dict(strategy="tp_sp", impl=PUBLISHED["megatron"]),
}


def odysseus_predictions(seq: str) -> dict:
    """``{method: Prediction}`` of the Odysseus-Transformer table's set-up at ``seq``."""
    m = ModelConfig.preset("llama2-7b")
    out = {}
    for name, cfg in _ODY_METHODS.items():
        cfg = dict(cfg)
        s = cfg.pop("strategy")
        out[name] = predict(s, m, seq, world=World(8, 8), train=_ODY_TRAIN, **cfg)
    return out


def _odysseus_checks() -> list[Check]:
    exp = "Odysseus-Transformer: Llama-2-7B, 8x A100-80GB"
    out = []
    for seq in ("16K", "32K", "64K", "96K"):
        pred = odysseus_predictions(seq)
        pub = ODYSSEUS_TABLE[seq]
        if seq in ("64K", "96K"):
            oom_pub = sorted(k for k, v in pub.items() if v[0] is None)
            oom_pred = sorted(k for k, p in pred.items() if not p.fits)
            out.append(Check(exp, f"methods that OOM at {seq}", ", ".join(oom_pub), ", ".join(oom_pred), None, "hit",
                             "peak = weights + saved activations + largest transient, x1.10 allocator slack, "
                             "against 78.5 GiB usable"))
        if seq in ("16K", "32K"):
            fastest = min(pub, key=lambda k: pub[k][0])
            slowest = max(pub, key=lambda k: pub[k][0])
            p_fast = min(pred, key=lambda k: pred[k].step_time_s)
            p_slow = max(pred, key=lambda k: pred[k].step_time_s)
            out.append(Check(exp, f"fastest / slowest at {seq}", f"{fastest} / {slowest}", f"{p_fast} / {p_slow}", None,
                             "hit", "the three TP-family methods sit within 3% of each other in the model and "
                                    "within 7% in the paper; their order is inside the noise"))
            u = pred["Ulysses"].step_time_s
            out.append(Check(exp, f"Ulysses seconds / 10 iterations at {seq}", pub["Ulysses"][0], 10 * u, TOLERANCE,
                             "hit", "absolute time at the profile's achieved rates"))
            for name in ("Ring", "Odysseus", "Odysseus + ZeRO-3 MLP", "TP-SP"):
                note = ("contiguous layout: rank N-1 computes at every step, plus ring-flash-attn's fp32 "
                        "merges and fp32 dK/dV" if name == "Ring" else "")
                out.append(Check(exp, f"time {name} / Ulysses at {seq}", pub[name][0] / pub["Ulysses"][0],
                                 pred[name].step_time_s / u, TOLERANCE, "hit", note))
        for name, (_, mem) in pub.items():
            if mem is not None:
                out.append(Check(exp, f"peak GiB {name} at {seq} (published: reserved GB)", mem, pred[name].peak_gib,
                                 MEMORY_TOLERANCE, "hit", ""))
    return out


# ---- TokenRing (ACA-Lab-SJTU/token-ring README): 4x A10 on PCIe (PIX/PXB), forward, causal zigzag ----
# LLaMA2-7B attention shapes (32 heads x 128), 24,000 tokens over 4 GPUs; nsight traces: ring attention
# ~7.6 ms per step (communication-bound); TokenRing ~3.5 ms at steps 0-1 (Q transfer hidden under the
# block), ~4.6 ms at step 2 (Q and Out in flight, PXB path).
def _tokenring_checks() -> list[Check]:
    exp = "TokenRing README: 4x A10 PCIe, 24000 tokens, 32x128 heads"
    m = ModelConfig(name="llama2-7b-attention", layers=1, hidden=4096, heads=32, kv_heads=32)
    hw = load_hardware("a10-pcie")
    w = World(4, 4)
    ring = attention_step("zigzag", m, 24000, 1, w, "bf16", hw, PUBLISHED["ring-flash-attn"])
    tok = attention_step("token_ring", m, 24000, 1, w, "bf16", hw, PUBLISHED["tokenring-paper"])
    return [
        Check(exp, "ring attention ms per step", 7.6, 1e3 * ring["step"], TOLERANCE, "hit",
              "K and V (98 MB) per step at ~12 GB/s PCIe P2P; the block (3.6 ms) hides under it"),
        Check(exp, "TokenRing ms per step, Q transfer hidden (steps 0-1)", 3.5, 1e3 * tok["compute"], TOLERANCE, "hit",
              "the zigzag half-block at the A10's achieved attention rate"),
        Check(exp, "TokenRing ms per step, Q and Out in flight (step 2)", 4.6, 1e3 * tok["step"], TOLERANCE, "hit",
              "bf16 Out + fp32 lse back while Q goes forward (full duplex); the model has one PCIe speed, the "
              "server mixes PIX and PXB paths"),
        Check(exp, "ring / TokenRing time per step", 7.6 / 3.5, ring["step"] / tok["step"], TOLERANCE, "hit",
              "predicted with TokenRing's busiest rank (a full Q and a full Out in flight)"),
    ]


def validate() -> list[Check]:
    """Every check, recomputed from the current model.

    Example::

        >>> checks = validate()
        >>> all(c.status == c.expect for c in checks)
        True
    """
    return _lasp2_checks() + _odysseus_checks() + _tokenring_checks()


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "fits" if v else "OOM"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v) if v != "" else "(none)"


def markdown(checks: list[Check] | None = None) -> str:
    """The predicted-vs-published table in markdown."""
    checks = validate() if checks is None else checks
    lines = ["| experiment | quantity | published | predicted | error | status | why |",
             "|---|---|---|---|---|---|---|"]
    for c in checks:
        err = "-" if c.rel_error is None else f"{100 * c.rel_error:+.0f}%"
        lines.append(f"| {c.experiment} | {c.quantity} | {_fmt(c.published)} | {_fmt(c.predicted)} | {err} | "
                     f"{c.status.upper() if c.status == 'miss' else c.status} | {c.note} |")
    return "\n".join(lines)


__all__ = ["Check", "validate", "markdown", "odysseus_predictions", "ODYSSEUS_TABLE", "LASP2_STEP_FLOOR_S",
           "TOLERANCE", "MEMORY_TOLERANCE"]
