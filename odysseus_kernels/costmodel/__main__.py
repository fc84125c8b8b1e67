"""``python -m odysseus_kernels.costmodel {plan,validate,comm,hardware} ...`` (also ``odysseus-playground plan``).

  plan      rank every strategy for a model, sequence length and GPU count (table, JSON, PNG)
  validate  the predicted-vs-published table
  comm      one strategy's closed-form communication per layer and rank
  hardware  list the hardware profiles, or print one as JSON (a starting point for --hardware FILE)
"""
from __future__ import annotations

import argparse
import json
import sys

from .calibration import calibrate
from .config import MODEL_PRESETS, ModelConfig, TrainConfig, World, parse_tokens
from .hardware import HARDWARE_PRESETS, load_hardware
from .planner import format_plan, plan, plot_plan
from .strategies import STRATEGIES, comm_volume


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _model(a) -> ModelConfig:
    m = ModelConfig.preset(a.model) if a.model else ModelConfig(name="custom")
    kw = {k: getattr(a, k) for k in ("layers", "hidden", "heads", "kv_heads", "intermediate", "linear_layers",
                                     "hybrid_ratio") if getattr(a, k) is not None}
    if a.vocab is not None:
        kw["vocab_size"] = a.vocab
    return m.with_(**kw) if kw else m


def _hardware(a):
    overrides = {}
    for item in a.set or []:
        if "=" not in item:
            raise ValueError(f"--set: expected FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _value(v.strip())
    hw = load_hardware(a.hardware, overrides or None)
    if a.calibrate:
        hw, report = calibrate(hw, a.calibrate)
        for line in report:
            print(f"calibration: {line}", file=sys.stderr)
    return hw


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"preset: {', '.join(sorted(MODEL_PRESETS))} (fields below override)")
    for f in ("layers", "hidden", "heads", "kv-heads", "intermediate", "vocab", "hybrid-ratio"):
        p.add_argument(f"--{f}", type=int, default=None)
    p.add_argument("--linear-layers", choices=["none", "all", "hybrid"], default=None)
    p.add_argument("--seq-len", required=True, help="global tokens, e.g. 2M, 128K, 24000")
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: the hardware profile's")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--hardware", default="a100-80gb-sxm",
                   help=f"profile ({', '.join(sorted(k for k in HARDWARE_PRESETS if '-' in k))}) or a JSON file")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a hardware field, e.g. --set gemm_eff=0.7 --set inter_p2p_gbps=11")
    p.add_argument("--calibrate", nargs="*", default=None, metavar="PATH",
                   help="apply calibration files (default dir: benchmarks/results)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m odysseus_kernels.costmodel", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("plan", help="rank the strategies")
    _common(pl)
    pl.add_argument("--sp", type=int, default=None, help="sequence-parallel degree (default: all GPUs)")
    pl.add_argument("--strategies", default=None, help=f"comma list of {', '.join(STRATEGIES)}")
    pl.add_argument("--no-baselines", action="store_true", help="leave out rsa and lasp1")
    pl.add_argument("--optimizer", choices=["adam", "sgd", "none"], default="adam")
    pl.add_argument("--recompute", choices=["none", "full"], default="none")
    pl.add_argument("--activations", choices=["fused", "eager"], default="fused")
    pl.add_argument("--logits-bytes", type=int, default=10,
                    help="bytes per logit alive at the loss (10: bf16 logits + fp32 upcast + fp32 grad; "
                         "about 0 with a chunked/fused cross-entropy)")
    pl.add_argument("--json", default=None, help="write the predictions here")
    pl.add_argument("--png", default=None, help="write time vs sequence length / GPUs here (needs matplotlib)")
    va = sub.add_parser("validate", help="predicted vs published")
    va.add_argument("--json", default=None)
    co = sub.add_parser("comm", help="closed-form communication of one strategy")
    _common(co)
    co.add_argument("--strategy", required=True, choices=STRATEGIES)
    co.add_argument("--layer", default=None, help="index or 'all' (default: one layer)")
    hw = sub.add_parser("hardware", help="list or print hardware profiles")
    hw.add_argument("name", nargs="?", default=None)
    return p


def _plan(a) -> int:
    m = _model(a)
    hw = _hardware(a)
    train = TrainConfig(optimizer=a.optimizer, recompute=a.recompute, activations=a.activations,
                        logits_bytes=a.logits_bytes)
    L = parse_tokens(a.seq_len)
    strategies = [s.strip() for s in a.strategies.split(",")] if a.strategies else None
    preds = plan(m, L, a.gpus, gpus_per_node=a.gpus_per_node, sp=a.sp, batch=a.batch, dtype=a.dtype, hardware=hw,
                 strategies=strategies, train=train, baselines=not a.no_baselines)
    w = World(a.gpus, a.gpus_per_node or hw.default_gpus_per_node, a.sp)
    header = (f"{m.name}: {L:,} tokens x batch {a.batch}, {a.gpus} x {hw.name} ({w.nodes} node(s) of "
              f"{w.gpus_per_node}, SP {w.sp}, DP {w.dp}), {a.dtype}, optimizer {a.optimizer}\n")
    print(format_plan(preds, header))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": m.to_dict(), "seq_len": L, "gpus": a.gpus, "hardware": hw.to_dict(),
                       "predictions": [p.as_dict() for p in preds]}, f, indent=2, default=str)
        print(f"wrote {a.json}")
    if a.png:
        names = [p.strategy for p in preds if p.feasible]
        out = plot_plan(a.png, m, L, a.gpus, names, batch=a.batch, dtype=a.dtype, hardware=hw, train=train,
                        gpus_per_node=w.gpus_per_node)
        if out:
            print(f"wrote {out}")
    return 0


def _comm(a) -> int:
    m = _model(a)
    layer = None if a.layer is None else ("all" if a.layer == "all" else int(a.layer))
    v = comm_volume(a.strategy, m, parse_tokens(a.seq_len), a.batch, a.gpus, a.dtype, layer=layer)
    print(f"{a.strategy} on {m.name}, {parse_tokens(a.seq_len):,} tokens, {a.gpus} ranks, {a.dtype}: bytes per rank"
          f" ({'all layers' if layer == 'all' else 'one layer'})")
    for phase, kinds in v.as_dict().items():
        for kind, s in kinds.items():
            print(f"  {phase:<9} {kind:<15} sent {s['sent']:>16,}  received {s['received']:>16,}  calls {s['calls']}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "plan":
            return _plan(a)
        if a.cmd == "comm":
            return _comm(a)
        if a.cmd == "validate":
            from .validation import markdown, validate

            checks = validate()
            print(markdown(checks))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump([{**c.__dict__, "status": c.status} for c in checks], f, indent=2, default=str)
            return 0 if all(c.status == c.expect for c in checks) else 1
        if a.name:
            print(json.dumps(load_hardware(a.name).to_dict(), indent=2))
        else:
            for k, hw in HARDWARE_PRESETS.items():
                if k == hw.name:
                    print(f"{k}: {hw.description}\n")
        return 0
    except ValueError as e:
        print(f"costmodel: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
