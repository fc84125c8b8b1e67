"""Predict every strategy on one configuration and rank them: step time, tokens/s, MFU, memory, fit."""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import TrainConfig, World, dtype_bytes, dtype_class, parse_tokens
from .flops import model_flops_per_step
from .hardware import HardwareProfile, load_hardware
from .impl import OURS, Impl
from .published import published_value
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
        right = published_value(impl, "linear_ring_right_product", False)
        cfg = ("linear layers: right product per visiting K/V" if right
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
    return {s: [(L, g, t) for L, g, t, _ in pts] for s, pts in sweep_detail(model, seq_lens, gpus_list, strategies,
                                                                               **kw).items()}


def sweep_detail(model, seq_lens, gpus_list, strategies, **kw) -> dict:
    """Like :func:`sweep` with the reason a point is missing:
    ``{strategy: [(seq_len, gpus, step_time_s or None, reason)]}``; ``reason`` is ``""`` for a point
    that is shown, the planner's own note for an infeasible configuration (e.g. heads not divisible
    by the degree), or ``"out of memory (peak X GiB)"``."""
    out: dict = {s: [] for s in strategies}
    for L in seq_lens:
        for g in gpus_list:
            for s in strategies:
                p = predict(s, model, L, world=g, **kw)
                if not p.feasible:
                    reason = p.note or "infeasible"
                elif not p.fits:
                    reason = f"out of memory (peak {p.peak_gib:.1f} GiB)"
                else:
                    reason = ""
                out[s].append((parse_tokens(L), g, None if reason else p.step_time_s, reason))
    return out


def _fmt_tokens(n: int) -> str:
    for suffix, size in (("M", 2**20), ("K", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n:,}"


def _missing_notes(detail: dict, axis: int, unit: str) -> list[str]:
    """One line per strategy and kind of reason for the points left out of a panel, naming the x
    values: ``"rsa: out of memory at 32K (peak 196 GiB), 64K (656 GiB)"`` or
    ``"ulysses: infeasible at 64 GPUs: heads (32) must be divisible by ..."``."""
    fmt = _fmt_tokens if unit == "tokens" else str
    lines = []
    for s, pts in detail.items():
        oom = [(pt[axis], pt[3][len("out of memory (peak "):-1]) for pt in pts if pt[3].startswith("out of memory")]
        other: dict = {}
        for pt in pts:
            if pt[3] and not pt[3].startswith("out of memory"):
                other.setdefault(pt[3], []).append(pt[axis])
        if oom:
            lines.append(f"{s}: out of memory at " + ", ".join(
                f"{fmt(x)} {unit} (peak {gib})" if i == 0 else f"{fmt(x)} ({gib})" for i, (x, gib) in enumerate(oom)))
        for reason, xs in other.items():
            reason = reason[len(s) + 2:] if reason.startswith(s + ": ") else reason
            lines.append(f"{s}: infeasible at {', '.join(fmt(x) for x in xs)} {unit}: {reason}")
    return lines


def plot_plan(path: str, model, seq_len, gpus, strategies, **kw) -> str | None:
    """PNG of predicted step time vs sequence length (at ``gpus``) and vs GPU count (at ``seq_len``)
    per strategy (a fixed colour, marker and line style each). Points left out are listed under the
    plots with their true reason: an infeasible configuration (the planner's note, e.g. head
    divisibility) or out of memory. Returns the path, or ``None`` with a message when matplotlib is
    missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("(matplotlib not installed: no plot; pip install 'odysseus-kernels[bench]')")
        return None
    from .plot_style import strategy_style

    L = parse_tokens(seq_len)
    per_node = kw.get("gpus_per_node") or load_hardware(kw.get("hardware", "a100-80gb-sxm")).default_gpus_per_node
    lens = [L // 2**k for k in range(4, -1, -1)] + [L * 2, L * 4]
    counts = sorted({max(1, gpus // 4), max(1, gpus // 2), gpus, gpus * 2, gpus * 4})
    counts = [c for c in counts if c <= per_node or c % per_node == 0]
    by_len = sweep_detail(model, lens, [gpus], strategies, **kw)
    by_gpu = sweep_detail(model, [L], counts, strategies, **kw)
    n1, n2 = _missing_notes(by_len, 0, "tokens"), _missing_notes(by_gpu, 1, "GPUs")
    notes = ([f"left panel ({gpus} GPUs):"] + ["  " + n for n in n1] if n1 else []) + (
        [f"right panel ({L:,} tokens):"] + ["  " + n for n in n2] if n2 else [])
    line_in, plot_in, head_in = 0.15, 4.0, 0.7
    notes_in = (0.35 + line_in * len(notes)) if notes else 0.0
    fig_h = head_in + plot_in + 0.8 + notes_in
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, fig_h))
    for s in strategies:
        st = strategy_style(s)
        pts = [(x, t) for x, _, t, _ in by_len[s] if t is not None]
        if pts:
            a1.plot(*zip(*pts), label=s, **st)
        pts = [(g, t) for _, g, t, _ in by_gpu[s] if t is not None]
        if pts:
            a2.plot(*zip(*pts), label=s, **st)
    a1.set(xscale="log", yscale="log", xlabel="global sequence length (tokens)", ylabel="predicted step time (s)",
           title=f"{gpus} GPUs")
    a2.set(xscale="log", yscale="log", xlabel="GPUs (sequence-parallel degree)", ylabel="predicted step time (s)",
           title=f"{L:,} tokens")
    a1.set_xticks(lens, [_fmt_tokens(x) for x in lens])  # one label per swept length: no overlap
    a2.set_xticks(counts, [str(c) for c in counts])
    for a in (a1, a2):
        a.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    handles, labels = a1.get_legend_handles_labels()
    h2, l2 = a2.get_legend_handles_labels()
    for h, lab in zip(h2, l2):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.86, 0.93), fontsize=8, frameon=False)
    fig.suptitle(f"{_as_model(model).name}: predicted step time"
                 + ("; points left out are listed below with their reason" if notes else ""))
    if notes:
        fig.text(0.01, 0.1 / fig_h, "Not shown (the true reason for each missing point):\n" + "\n".join(notes),
                 fontsize=7, va="bottom", family="monospace")
    fig.subplots_adjust(left=0.07, right=0.85, top=1 - head_in / fig_h, bottom=(notes_in + 0.8) / fig_h, wspace=0.28)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["Prediction", "predict", "plan", "format_plan", "sweep", "sweep_detail", "plot_plan", "BASELINES"]
