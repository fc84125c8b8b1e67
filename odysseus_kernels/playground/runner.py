"""The playground's per-rank work: train the same model a few steps under each strategy and
compare it with the single-device model (same weights, same data)."""
from __future__ import annotations

import contextlib
import math
import sys
import statistics
import time
from dataclasses import dataclass

import torch

from .. import layers as L
from ..comm import comm_ledger, group_info
from ..costmodel.strategies import usp_degrees
from ..models import LlamaConfig, LlamaModel, make_batch, token_loss_sum
from ..ops import local_positions, shard_sequence
from ..ops.attention import usp_groups

SOFTMAX_STRATEGIES = ("tp_sp", "odysseus", "ulysses", "ring", "zigzag", "token_ring", "usp", "allgather_kv", "rsa")
LINEAR_STRATEGIES = ("lasp2", "lasp2h")
STRATEGIES = SOFTMAX_STRATEGIES + LINEAR_STRATEGIES
# Strategies that keep the model's own MLP on the local tokens, so the blockwise (chunked) MLP
# changes their memory; tp_sp and odysseus replace it by a TP / ZeRO MLP that has no chunked mode.
NO_MLP_CHUNKING = ("tp_sp", "odysseus")
MLP_CHUNKING_STRATEGIES = tuple(s for s in STRATEGIES if s not in NO_MLP_CHUNKING)


def progress_line(done: int, total: int, what: str) -> None:
    width = 24
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what:<16}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


# The playground's model unless told otherwise: 2 layers, d = 64, 4 heads, MHA, SwiGLU 128, vocab 128.
DEFAULT_MODEL = LlamaConfig(layers=2, hidden=64, heads=4, kv_heads=4, intermediate=128, vocab_size=128, hybrid_ratio=1)
# the command line's model flags -> LlamaConfig fields
MODEL_FLAGS = {"layers": "layers", "hidden": "hidden", "heads": "heads", "kv_heads": "kv_heads",
               "intermediate": "intermediate", "vocab": "vocab_size", "hybrid_ratio": "hybrid_ratio",
               "mlp_chunk_size": "mlp_chunk_size"}


@dataclass
class _RunSettings:
    strategies: tuple = STRATEGIES
    seq_len: int = 64
    batch: int = 1
    model: LlamaConfig = DEFAULT_MODEL
    dtype: str = "float32"
    steps: int = 3
    warmup: int = 1
    lr: float = 1e-2
    device: str = "cpu"
    ulysses_degree: int | None = None
    seed: int = 0


class RunConfig(_RunSettings):
    """A playground run: the model (``model``, a :class:`~odysseus_kernels.models.LlamaConfig`; its
    softmax form, see :meth:`model_config`) and the run settings.

    The model's fields may also be given (and read) flat, as the command line's flags:
    ``RunConfig(hidden=32, heads=4, kv_heads=2, vocab=64, ...)`` changes those fields of ``model``
    (``vocab`` is ``vocab_size``), validated by the model's own rules; ``rc.hidden`` reads ``rc.model.hidden``.
    """

    def __init__(self, *args, model: LlamaConfig | None = None, **kw):
        flags = {MODEL_FLAGS[k]: kw.pop(k) for k in list(kw) if k in MODEL_FLAGS}
        model = DEFAULT_MODEL if model is None else model
        super().__init__(*args, model=model.with_(**flags) if flags else model, **kw)

    def __getattr__(self, name):
        model = self.__dict__.get("model")
        if name in MODEL_FLAGS and model is not None:
            return getattr(model, MODEL_FLAGS[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def model_config(self, strategy: str) -> LlamaConfig:
        """The model ``strategy`` trains: LASP-2 an all-linear one, LASP-2H a hybrid, the rest softmax."""
        return self.model.with_(linear_layers={"lasp2": "all", "lasp2h": "hybrid"}.get(strategy, "none"))


def model_config(rc: RunConfig, strategy: str) -> LlamaConfig:
    """``rc.model_config(strategy)``."""
    return rc.model_config(strategy)


def check_config(rc: RunConfig, world: int) -> None:
    """Raise a ValueError naming the strategy and what to change for impossible configurations."""
    for s in rc.strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    for s in rc.strategies:
        zig = s in ("zigzag", "token_ring", "usp")
        k = 2 * world if zig else world
        if s == "usp":
            usp_degrees(world, rc.heads, rc.kv_heads, rc.ulysses_degree)
        if rc.seq_len % k:
            raise ValueError(f"{s}: --seq-len {rc.seq_len} must be divisible by {k} "
                             f"({'2 x ' if zig else ''}world size {world}); try --seq-len {k * max(1, rc.seq_len // k)}")
        if s in ("tp_sp", "odysseus", "ulysses") and (rc.heads % world or rc.kv_heads % world):
            raise ValueError(f"{s}: --heads ({rc.heads}) and --kv-heads ({rc.kv_heads}) must be divisible by the "
                             f"world size ({world}); use --kv-heads {world * max(1, rc.kv_heads // world)} or fewer ranks")
        if s in ("tp_sp",) and rc.intermediate % world:
            raise ValueError(f"{s}: --intermediate ({rc.intermediate}) must be divisible by the world size ({world})")
        if s == "odysseus" and (rc.intermediate % world or rc.hidden % world):
            raise ValueError(f"odysseus: --intermediate ({rc.intermediate}) and --hidden ({rc.hidden}) must be "
                             f"divisible by the world size ({world}) for ZeRO-3 sharding")


class _SavedBytes:
    """Bytes of tensors autograd saves for backward: the activation memory of a training step
    (the honest per-strategy measure on CPU, where there is no allocator peak to read)."""

    def __init__(self):
        self.bytes = 0
        self._seen: set = set()

    def pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    @contextlib.contextmanager
    def track(self):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield self


def _reference(rc: RunConfig, strategy: str, device):
    """Loss and named gradients of the single-device model in float64."""
    cfg = model_config(rc, strategy)
    model = LlamaModel(cfg).to(device=device, dtype=torch.float64)
    ids, labels = make_batch(cfg, rc.batch, rc.seq_len, seed=rc.seed)
    ids, labels = ids.to(device), labels.to(device)
    loss = token_loss_sum(model(ids, torch.arange(rc.seq_len, device=device)), labels) / labels.numel()
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def _apply(strategy: str, model, group, rc: RunConfig, world: int):
    if strategy == "ring":
        return L.apply_ring(model, group, layout="contiguous")
    if strategy == "zigzag":
        return L.apply_ring(model, group, layout="zigzag")
    if strategy == "usp":
        u, _ = usp_degrees(world, rc.heads, rc.kv_heads, rc.ulysses_degree)
        g = usp_groups(u, group)
        return L.apply_usp(model, ulysses_group=g.ulysses_group, ring_group=g.ring_group, sp_group=group,
                           layout="zigzag")
    return getattr(L, f"apply_{strategy}")(model, group)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(strategy: str, rc: RunConfig, group=None, *, device=None, dtype=None):
    """``(model, plan, ids, labels, positions)`` of this rank: ``rc``'s model for ``strategy`` on ``device`` in
    ``dtype`` with the strategy's layers applied over ``group``, and this rank's shard of ``rc``'s batch."""
    cfg = model_config(rc, strategy)
    model = LlamaModel(cfg).to(device=device, dtype=dtype)
    plan = _apply(strategy, model, group, rc, group_info(group).size)
    ids, labels = make_batch(cfg, rc.batch, rc.seq_len, seed=rc.seed)
    ids_l, labels_l = (shard_sequence(t.to(device), group=plan.group, layout=plan.layout) for t in (ids, labels))
    pos = local_positions(ids_l.shape[1], rank=plan.group.rank, world_size=plan.group.size, layout=plan.layout,
                          device=device)
    return model, plan, ids_l, labels_l, pos


def run_strategy(strategy: str, rc: RunConfig, group=None) -> dict:
    """Train ``rc.steps`` steps under ``strategy`` on this rank; return this rank's measurements."""
    info = group_info(group)
    device = torch.device(rc.device if rc.device != "cuda" else f"cuda:{torch.cuda.current_device()}")
    dtype = getattr(torch, rc.dtype)
    ref_loss, ref_grads = _reference(rc, strategy, device)
    model, plan, ids_l, labels_l, pos = prepare(strategy, rc, group, device=device, dtype=dtype)
    n_labels = rc.batch * rc.seq_len  # the global batch's labels (make_batch: [batch, seq_len], none ignored)
    opt = torch.optim.SGD(model.parameters(), lr=rc.lr)
    times, losses = [], []
    first = {}
    for step in range(rc.warmup + rc.steps):
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        saved = _SavedBytes()
        _sync(device)
        t0 = time.perf_counter()
        with comm_ledger() as act, saved.track():
            local_loss = token_loss_sum(model(ids_l, pos), labels_l) / n_labels
            local_loss.backward()
        with comm_ledger() as grad_sync:
            plan.finish_backward()
        _sync(device)
        dt = time.perf_counter() - t0
        loss_t = local_loss.detach().reshape(1).to(torch.float64)
        if step == 0:
            from ..comm import all_reduce

            all_reduce(loss_t, group=plan.group)  # the global loss, for the report only
            grads = L.full_grads(model, plan)
            err = max(((grads[n].double() - g).norm() / g.norm().clamp_min(1e-30)).item()
                      for n, g in ref_grads.items())
            first = {
                "loss": loss_t.item(),
                "loss_rel_err": abs(loss_t.item() - ref_loss) / abs(ref_loss),
                "grad_max_rel_err": err,
                "activation_comm": act.as_dict(),
                "grad_sync_comm": grad_sync.as_dict(),
                "saved_activation_bytes": saved.bytes,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            }
        else:
            losses.append(loss_t.item())
        if step >= rc.warmup:
            times.append(dt)
        opt.step()
    return {
        "strategy": strategy,
        "rank": info.rank,
        "world": info.size,
        "step_time_s": statistics.median(times) if times else math.nan,
        **first,
    }


def run_all(rc: RunConfig, progress: bool = True) -> list[list[dict]]:
    """Every strategy on this rank; returns ``[per strategy: this rank's dict]``."""
    info = group_info()
    out = []
    for i, s in enumerate(rc.strategies):
        if progress and info.rank == 0:
            progress_line(i, len(rc.strategies), s)
        out.append(run_strategy(s, rc))
    if progress and info.rank == 0:
        progress_line(len(rc.strategies), len(rc.strategies), "done")
    return out


def blockwise_memory(rc: RunConfig, strategy: str, chunk: int, group=None) -> list[dict]:
    """Saved activation bytes (peak allocator bytes on CUDA) of one training step under
    ``strategy`` at the configured and at twice the sequence length, with the dense MLP and with
    the blockwise MLP (``mlp_chunk_size=chunk``): the LWM / BPT memory mode."""
    import dataclasses

    out = []
    for seq in (rc.seq_len, 2 * rc.seq_len):
        for c in (None, chunk):
            r = run_strategy(strategy, dataclasses.replace(rc, seq_len=seq, mlp_chunk_size=c, steps=1, warmup=0),
                             group)
            out.append({"seq_len": seq, "mlp_chunk_size": c, "saved_activation_bytes": r["saved_activation_bytes"],
                        "peak_memory_bytes": r["peak_memory_bytes"], "grad_max_rel_err": r["grad_max_rel_err"]})
    return out


def blockwise_report(rc: RunConfig, strategies, chunk: int, group=None) -> dict:
    """:func:`blockwise_memory` for every strategy of ``strategies`` where the MLP chunking matters
    (:data:`MLP_CHUNKING_STRATEGIES`); ``{strategy: rows}`` in the given order."""
    return {s: blockwise_memory(rc, s, chunk, group) for s in strategies if s in MLP_CHUNKING_STRATEGIES}
