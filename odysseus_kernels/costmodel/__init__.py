"""Cost model and planner: predicted communication, FLOPs, memory and step time of every
sequence-parallel strategy, past the machines we can test on. No communication, no GPU; imported on
first use of ``ok.costmodel`` (``import odysseus_kernels`` does not load it).

- :func:`comm_volume` — bytes one rank sends/receives per layer, per ledger kind and phase, exactly
  as ``ok.comm_ledger()`` records them (so a ledger test is one line per strategy).
- :func:`predict` / :func:`plan` — step time, tokens/s, MFU, memory and fit; strategies ranked.
- :mod:`.hardware` — A100 / H100 / A10 profiles as data, overridable, calibratable from benchmark
  results (:func:`calibrate`).
- :func:`validate` — predictions against published results (LASP-2, Odysseus-Transformer, TokenRing).
- communication volumes of this package's strategies are the ops' own closed forms
  (``ring_comm_bytes``, ...): the cost model is a client of the ops, and the ledger tests of the real
  ops pin both. :class:`Impl` carries only the ops' own arguments that change traffic
  (``tp_impl``, ``tp_save_gathered``); :mod:`.published` describes the other systems whose
  published numbers :func:`validate` reproduces (:data:`PUBLISHED`).

Example::

    >>> from odysseus_kernels import costmodel as cm
    >>> v = cm.comm_volume("lasp2", "linear-llama3-1b", 2**21, 1, 64, "bf16")
    >>> v.received("all_gather", "forward") == 63 * 16 * 128 * 128 * 4
    True
    >>> cm.plan("linear-llama3-1b", "2M", 64)[0].strategy
    'lasp2'
"""
from .calibration import SCHEMA as CALIBRATION_SCHEMA
from .calibration import calibrate, profile_for_device, write_calibration
from .collectives import KINDS, PHASES, Call, CommVolume, call_time
from .config import MODEL_PRESETS, ModelConfig, TrainConfig, World, dtype_bytes, parse_tokens
from .flops import causal_pairs, layer_flops, model_flops_per_step
from .hardware import HARDWARE_PRESETS, HardwareProfile, Link, load_hardware
from .impl import OURS, Impl
from .memory import MemoryBreakdown, activation_bytes_per_token, memory
from .published import PUBLISHED, Published
from .planner import Prediction, format_plan, plan, plot_plan, predict, sweep
from .strategies import (DESCRIPTIONS, PACKAGE_STRATEGIES, STRATEGIES, check, comm_volume, layer_calls,
                         playground_comm_per_layer, usp_degrees)
from .timing import StepTime, attention_step, step_time
from .validation import Check, markdown, validate

__all__ = [
    "CALIBRATION_SCHEMA", "Call", "Check", "CommVolume", "DESCRIPTIONS", "HARDWARE_PRESETS", "HardwareProfile",
    "Impl", "KINDS", "Link", "MODEL_PRESETS", "MemoryBreakdown", "ModelConfig", "OURS", "PACKAGE_STRATEGIES",
    "PHASES", "PUBLISHED", "Prediction", "Published", "STRATEGIES", "StepTime", "TrainConfig", "World",
    "activation_bytes_per_token",
    "attention_step", "calibrate", "call_time", "causal_pairs", "check", "comm_volume", "dtype_bytes", "format_plan",
    "layer_calls", "layer_flops", "load_hardware", "markdown", "memory", "model_flops_per_step", "parse_tokens", "plan",
    "playground_comm_per_layer", "plot_plan", "predict", "profile_for_device", "step_time", "sweep", "usp_degrees",
    "validate", "write_calibration",
]
