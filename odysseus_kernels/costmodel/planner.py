"""Predict every strategy on one configuration and rank them: step time, tokens/s, MFU, memory, fit."""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import TrainConfig, World, dtype_bytes, dtype_class, parse_tokens
from .flops import model_flops_per_step
from .hardware import HardwareProfile, load_hardware
from .impl import OURS, Impl
from .memory import GIB, MemoryBreakdown, memory
from .strategies import DESCRIPTIONS, STRATEGIES, _as_model, check, comm_volume, usp_degrees
from .timing import StepTime, step_time

BASELINES = ("rsa", "lasp1")  # published systems kept for comparison


@dataclass
class Prediction:
    """One strategy's predicted step on one configuration (``feasible=False``: ``note`` says why)."""

    strategy: str
    feasible: bool
    note: str = ""
    config: str = ""
    step_time_s: float = float("nan")
    tokens_per_s: float = float("nan")
    mfu: float = float("nan")
    memory: MemoryBreakdown | None = None
    fits: bool = False
    comm_per_layer_bytes: float = float("nan")
    time: StepTime | None = None
    extra: dict = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.memory.peak / GIB if self.memory else float("nan")

    def as_dict(self) -> dict:
        return {"strategy": self.strategy, "feasible": self.feasible, "note": self.note, "config": self.config,
                "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s, "mfu": self.mfu,
                "peak_memory_gib": self.peak_gib, "fits": self.fits,
                "comm_per_layer_bytes": self.comm_per_layer_bytes,
                "memory_gib": self.memory.as_gib() if self.memory else None,
                "time": self.time.as_dict() if self.time else None}


def _world(world, gpus_per_node: int | None, hw: HardwareProfile) -> World:
    if isinstance(world, World):
        return world
    return World(int(world), gpus_per_node or hw.default_gpus_per_node)


def predict(strategy: str, model, seq_len, *, batch: int = 1, world=8, dtype="bf16", hardware="a100-80gb-sxm",
            train: TrainConfig | None = None, impl: Impl | None = None, causal: bool = True,
            ulysses_degree: int | None = None, weights: str | None = None, odysseus_mlp: str = "zero3",
            gpus_per_node: int | None = None) -> Prediction:
    """Predict one strategy.

    Args:
        strategy: one of :data:`~.strategies.STRATEGIES`.
        model: :class:`ModelConfig`, preset name or ``LlamaConfig``.
        seq_len: global tokens per sequence (int or ``"2M"``); batch: sequences per SP group.
        world: :class:`World` or a GPU count (``gpus_per_node`` from the hardware profile).
        dtype: activation/compute dtype; hardware: profile name, JSON path, dict or profile.
        train, impl: :class:`TrainConfig` / :class:`Impl` (defaults: Adam, fused layers; :data:`OURS`).
        ulysses_degree: USP's Ulysses degree (default: the best feasible one).

    Returns:
        :class:`Prediction`.

    Example::

        >>> p = predict("lasp2", "linear-llama3-1b", "1M", world=64)
        >>> p.feasible and p.fits and p.step_time_s > 0
        True
    """
    m = _as_model(model)
    hw = load_hardware(hardware)
    w = _world(world, gpus_per_node, hw)
    L = parse_tokens(seq_len)
    train = train or TrainConfig()
    impl = impl or OURS
    n = w.sp
    try:
        check(strategy, m, L, n, impl=impl, ulysses_degree=ulysses_degree, weights=weights)
    except ValueError as e:
        return Prediction(strategy, False, note=str(e))
    if strategy == "usp" and ulysses_degree is None:
        return _best_usp(m, L, batch, w, dtype, hw, train, impl, causal, weights)
    b = dtype_bytes(dtype)
    t = step_time(strategy, m, L, batch, w, dtype, hw, train, impl, causal=causal, ulysses_degree=ulysses_degree,
                  weights=weights, odysseus_mlp=odysseus_mlp)
    mem = memory(strategy, m, L, batch, n, w.dp, b, train, impl, weights=weights, odysseus_mlp=odysseus_mlp,
                 ulysses_degree=ulysses_degree)
    vol = comm_volume(strategy, m, L, batch, n, dtype, layer="all", impl=impl, causal=causal,
                      ulysses_degree=ulysses_degree, weights=weights, odysseus_mlp=odysseus_mlp,
                      param_dtype={2: "bf16", 4: "fp32"}.get(train.param_bytes))
    tokens = batch * L * w.dp
    mfu = model_flops_per_step(m, L, batch, causal) * w.dp / (t.total * w.gpus * hw.peak_flops(dtype_class(dtype)))
    cfg = ""
    if strategy == "usp":
        u, r = usp_degrees(n, m.heads, m.kv_heads, ulysses_degree)
        cfg = f"ulysses {u} x ring {r}"
    if weights:
        cfg = ", ".join(x for x in (cfg, f"weights {weights}") if x)
    elif strategy == "odysseus" and odysseus_mlp != "zero3":
        cfg = f"mlp {odysseus_mlp}"
    if strategy in ("ring", "zigzag") and "linear" in m.layer_kinds():
        cfg = ("linear layers: right product per visiting K/V" if impl.linear_ring_right_product
               else "linear layers in the standard-attention manner (LASP-2 paper's baseline)")
    return Prediction(strategy, True, config=cfg, step_time_s=t.total, tokens_per_s=tokens / t.total, mfu=mfu,
                      memory=mem, fits=mem.peak <= hw.usable_bytes,
                      comm_per_layer_bytes=vol.received(phase=("forward", "backward")) / m.layers, time=t)


def _best_usp(m, L, batch, w, dtype, hw, train, impl, causal, weights) -> Prediction:
    best = None
    n = w.sp
    for u in range(2, n):  # u = 1 is zigzag ring, u = n is Ulysses: both ranked on their own
        if n % u or m.heads % u:
            continue
        p = predict("usp", m, L, batch=batch, world=w, dtype=dtype, hardware=hw, train=train, impl=impl,
                    causal=causal, ulysses_degree=u, weights=weights)
        if p.feasible and (best is None or (p.fits, -p.step_time_s) > (best.fits, -best.step_time_s)):
            best = p
    return best or Prediction("usp", False, note=f"usp: no Ulysses degree in [2, {n}) divides both the world ({n}) "
                                                  f"and the heads ({m.heads})")


def plan(model, seq_len, gpus, *, gpus_per_node: int | None = None, sp: int | None = None, batch: int = 1,
         dtype="bf16", hardware="a100-80gb-sxm", strategies=None, train: TrainConfig | None = None,
         impl: Impl | None = None, causal: bool = True, baselines: bool = True) -> list[Prediction]:
    """Predict every strategy and rank them: those that fit by step time, then those that do not
    fit, then the infeasible ones (with the reason). Strategies that keep full weights are also
    tried with ZeRO-3 weights, and USP with every Ulysses degree; the better variant is kept.

    Args:
        model, seq_len, batch, dtype, hardware, train, impl, causal: as in :func:`predict`.
        gpus, gpus_per_node, sp: the world (``sp`` defaults to all GPUs; the rest is data parallel).
        strategies: names to consider (default: all); baselines: include ``rsa`` and ``lasp1``.

    Returns:
        list of :class:`Prediction`, best first.

    Example::

        >>> ranked = plan("llama3-8b", "64K", 16)
        >>> ranked[0].fits
        True
    """
    hw = load_hardware(hardware)
    w = World(int(gpus), gpus_per_node or hw.default_gpus_per_node, sp)
    names = tuple(strategies) if strategies else tuple(s for s in STRATEGIES if baselines or s not in BASELINES)
    for s in names:
        if s not in STRATEGIES:
            raise ValueError(f"strategies: expected names from {', '.join(STRATEGIES)}, got {s!r}")
    preds = []
    for s in names:
        # strategies that keep full weights are also tried with ZeRO-3 weights; the better one is kept
        options = [None] if s in ("tp_sp", "odysseus") else [None, "zero3"]
        cands = [predict(s, model, seq_len, batch=batch, world=w, dtype=dtype, hardware=hw, train=train, impl=impl,
                         causal=causal, weights=o) for o in options]
        preds.append(min(cands, key=_rank_key))
    return sorted(preds, key=_rank_key)


def _rank_key(p: Prediction):
    return (not p.feasible, not p.fits, p.step_time_s if p.feasible else 0.0)


def format_plan(preds: list[Prediction], header: str = "") -> str:
    """The ranked table of :func:`plan` as text (one row per prediction, then a legend)."""
    cols = ["#", "strategy", "step s", "tokens/s", "MFU", "peak GiB", "fits", "comm/layer MiB", "exposed comm",
            "config / note"]
    rows = []
    for i, p in enumerate(preds, 1):
        if not p.feasible:
            rows.append(["-", p.strategy, "-", "-", "-", "-", "-", "-", "-", p.note])
            continue
        exp = p.time.exposed_comm / p.time.total if p.time else float("nan")
        rows.append([str(i), p.strategy + (" (baseline)" if p.strategy in BASELINES else ""),
                     f"{p.step_time_s:.3g}", f"{p.tokens_per_s:,.0f}", f"{100 * p.mfu:.0f}%", f"{p.peak_gib:.1f}",
                     "yes" if p.fits else "OOM", f"{p.comm_per_layer_bytes / 2**20:,.1f}", f"{100 * exp:.0f}%",
                     p.config])
    widths = [max(len(c), *(len(r[j]) for r in rows)) for j, c in enumerate(cols)]

    def fmt(r):
        return "  ".join(v.ljust(widths[j]) if j in (1, 9) else v.rjust(widths[j]) for j, v in enumerate(r))

    out = ([header] if header else []) + [fmt(cols), fmt(["-" * x for x in widths])] + [fmt(r) for r in rows]
    out.append("\nstep s: predicted training step (fwd+bwd+grad sync+optimizer) on the busiest rank; comm/layer: "
               "bytes received per rank per layer, fwd+bwd; exposed comm: share of the step spent waiting on "
               "communication.\n" + "\n".join(f"  {s}: {DESCRIPTIONS[s]}" for s in dict.fromkeys(
                   p.strategy for p in preds if p.feasible)))
    return "\n".join(out)


def sweep(model, seq_lens, gpus_list, strategies, **kw) -> dict:
    """Step times over a grid: ``{strategy: [(seq_len, gpus, step_time_s or None when infeasible / OOM)]}``;
    ``kw`` goes to :func:`predict`."""
    out: dict = {s: [] for s in strategies}
    for L in seq_lens:
        for g in gpus_list:
            for s in strategies:
                p = predict(s, model, L, world=g, **kw)
                out[s].append((parse_tokens(L), g, p.step_time_s if p.feasible and p.fits else None))
    return out


def plot_plan(path: str, model, seq_len, gpus, strategies, **kw) -> str | None:
    """PNG of predicted step time vs sequence length (at ``gpus``) and vs GPU count (at ``seq_len``)
    per strategy. Returns the path, or ``None`` with a message when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install 'odysseus-kernels[bench]')")
        return None
    L = parse_tokens(seq_len)
    per_node = kw.get("gpus_per_node") or load_hardware(kw.get("hardware", "a100-80gb-sxm")).default_gpus_per_node
    lens = [L // 2**k for k in range(4, -1, -1)] + [L * 2, L * 4]
    counts = sorted({max(1, gpus // 4), max(1, gpus // 2), gpus, gpus * 2, gpus * 4})
    counts = [c for c in counts if c <= per_node or c % per_node == 0]
    by_len = sweep(model, lens, [gpus], strategies, **kw)
    by_gpu = sweep(model, [L], counts, strategies, **kw)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for s in strategies:
        pts = [(x, t) for x, _, t in by_len[s] if t is not None]
        if pts:
            a1.plot(*zip(*pts), marker="o", label=s)
        pts = [(g, t) for _, g, t in by_gpu[s] if t is not None]
        if pts:
            a2.plot(*zip(*pts), marker="o", label=s)
    a1.set(xscale="log", yscale="log", xlabel="global sequence length (tokens)", ylabel="predicted step time (s)",
           title=f"{gpus} GPUs")
    a2.set(xscale="log", yscale="log", xlabel="GPUs (sequence-parallel degree)", ylabel="predicted step time (s)",
           title=f"{L:,} tokens")
    a1.legend(fontsize=7)
    fig.suptitle(f"{_as_model(model).name}: points that do not fit in memory are left out")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["Prediction", "predict", "plan", "format_plan", "sweep", "plot_plan", "BASELINES"]
