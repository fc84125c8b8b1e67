"""Step time = compute at achieved rates + the communication each strategy cannot hide.

What overlaps (per strategy, busiest rank):

- ring / zigzag / USP's ring: the transfer for step s+1 runs under the block of step s (double
  buffers): ``sum_s max(block_s, transfer) + last block``; backward also carries dK/dV, whose last
  hop home is exposed. Merges outside the kernel cost HBM time (:func:`merge_bytes`).
- TokenRing: Q for the next step one way and the previous partial output the other way, both under
  the current block; the last partial output's trip home is exposed.
- Ulysses: its all-to-alls are on the critical path (nothing to overlap them with).
- all-gather-KV: the gather is exposed (the op gathers first, then attends).
- LASP-2: the single state AllGather overlaps the intra-chunk computation.
- LASP-1: a chain of N-1 hops, each a P2P of the state plus the inter-chunk product of the
  sending rank (its Algorithm: receive, compute ``Q_t M_{t-1}``, update, send).
- RSA: K ring, softmax over full rows, V ring; score rows cost HBM traffic.
- TP-SP / Odysseus: chunked AllGather-GEMM / GEMM-ReduceScatter hide the transfer behind the GEMM
  chunks (``max(gemm, comm + gemm/N)``); ZeRO-3 weight gathers are prefetched under the previous
  compute; replicated-gradient all-reduces overlap backward except the last bucket.

Every transfer's bytes come from the calls of :mod:`.strategies` (the ops' closed forms).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import flops as F
from .collectives import Call, call_time, p2p
from .config import ModelConfig, TrainConfig, World, dtype_bytes, dtype_class
from .hardware import HardwareProfile
from .impl import Impl
from .published import published_value
from .strategies import (_kv_heads_eff, lasp1_state_bytes, lasp2_state_bytes, layer_calls, ring_transfers,
                         tp_gemm_calls, token_ring_wire, usp_degrees)

# HBM bytes per output element per step that our ops spend merging partial results outside the
# attention kernel, (forward, backward). Ring attention (ops/attention/ring.py, Triton path): the
# forward merges into the running fp32 (out, lse) inside the kernel, dQ and the travelling dK/dV
# accumulate inside the kernel: nothing outside. TokenRing (ops/attention/token_ring.py): the
# owner merges each returned fp32 partial into its accumulators with ``merge_attention`` (read out,
# read the partial, write out: 12 B) and adds each returned dQ partial (12 B).
_OUR_MERGE_BYTES = {"ring": (0.0, 0.0), "token_ring": (12.0, 12.0)}


def merge_bytes(strategy: str, impl: Impl) -> tuple[float, float]:
    """``(forward, backward)`` HBM bytes per output element per ring step merged outside the
    kernel: ours (:data:`_OUR_MERGE_BYTES`) or a published system's."""
    f, b = _OUR_MERGE_BYTES["token_ring" if strategy == "token_ring" else "ring"]
    return published_value(impl, "merge_bytes_fwd", f), published_value(impl, "merge_bytes_bwd", b)


@dataclass
class StepTime:
    """Seconds of one training step on the busiest rank, with its breakdown."""

    total: float
    compute: float
    exposed_comm: float
    parts: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"total_s": self.total, "compute_s": self.compute, "exposed_comm_s": self.exposed_comm, **self.parts}


class _Ctx:
    def __init__(self, hw: HardwareProfile, world: World, dtype, model: ModelConfig, n: int, impl: Impl,
                 ulysses_degree):
        self.hw, self.world, self.model, self.n, self.impl = hw, world, model, n, impl
        self.dc = dtype_class(dtype)
        u, r = (n, 1)
        self.shapes = {"sp": world.group(n), "ulysses": world.group(n), "ring": world.group(1)}
        if ulysses_degree is not None:
            u, r = ulysses_degree
            self.shapes["ulysses"] = world.group(u)
            self.shapes["ring"] = world.group(r, stride=u)
        self.shapes["dp"] = world.group(world.dp, stride=world.sp)

    def gemm(self, fl):
        return fl / self.hw.rate("gemm", self.dc)

    def attn_f(self, fl):
        return fl / self.hw.rate("attn_fwd", self.dc)

    def attn_b(self, fl):
        return fl / self.hw.rate("attn_bwd", self.dc)

    def lin(self, fl):
        return fl / self.hw.rate("linear_attn", self.dc)

    def hbm(self, nbytes):
        return nbytes / (self.hw.hbm_gbps * 1e9)

    def t(self, c: Call) -> float:
        return call_time(c, self.hw, self.shapes[c.scope]) * c.count

    def p2p(self, fwd, bwd=0.0, scope="sp", group=None) -> float:
        g = self.shapes[scope].size if group is None else group
        return call_time(p2p("forward", g, send_fwd=fwd, send_bwd=bwd), self.hw, self.shapes[scope])


def _ring_loop(blocks: list[float], comm: float) -> float:
    """Steps whose next transfer hides under the current block."""
    if len(blocks) == 1:
        return blocks[0]
    return sum(max(c, comm) for c in blocks[:-1]) + blocks[-1]


def _overlapped(gemm: float, comm: float, n: int, on: bool) -> float:
    """A chunked GEMM with its collective: the local chunk first, each remote chunk's transfer under
    the previous chunk's GEMM."""
    return max(gemm, comm + gemm / n) if on else gemm + comm


def _pairs_per_step(strategy: str, c: float, n: int, causal: bool) -> list[float]:
    """Pairs per head the busiest rank computes at each ring step."""
    if not causal:
        return [c * c] * n
    if strategy in ("zigzag", "token_ring", "usp"):
        return [c * c / 2] * n
    return [c * c / 2] + [c * c] * (n - 1)  # contiguous: rank N-1 computes at every step


def _zero3_times(ctx: _Ctx, numels: list[int], pb: int, regather: bool) -> tuple[float, float]:
    """ZeRO-3 weights of one layer: (all-gather time in forward, gather-again + reduce-scatter in backward)."""
    n = ctx.n
    ag = sum(ctx.t(Call("all_gather", "forward", n, nbytes=v * pb // n)) for v in numels)
    rs = sum(ctx.t(Call("reduce_scatter", "backward", n, nbytes=v * pb)) for v in numels)
    return ag, rs + (ag if regather else 0.0)


def layer_time(strategy: str, kind: str, ctx: _Ctx, seq_len: int, batch: int, b: int, pb: int, train: TrainConfig, *,
               causal: bool, weights, odysseus_mlp: str, usp: tuple | None) -> tuple[float, float, float, float]:
    """``(fwd, bwd, fwd_compute, bwd_compute)`` seconds of one layer on the busiest rank."""
    m, n, impl = ctx.model, ctx.n, ctx.impl
    s = strategy
    if s == "lasp2h":
        s = "lasp2" if kind == "linear" else "allgather_kv"
    tokens = batch * seq_len / n
    c = seq_len / n
    eager = train.activations == "eager"
    right_product = published_value(impl, "linear_ring_right_product", False)
    fl = F.layer_flops(s, m, kind, seq_len, batch, n, b, causal=causal, eager=eager, right_product=right_product)
    ew_f, ew_b = ctx.hbm(fl.elementwise), ctx.hbm(2 * fl.elementwise)
    dq_elems = tokens * m.q_dim
    per_pair = 4.0 * batch * m.heads * m.head_dim
    lin_intra = ctx.lin(2.0 * m.heads * tokens * F.LINEAR_CHUNK * m.head_dim)
    t_sm = ctx.lin(F.state_matmul_flops(m, tokens))

    def core_local():  # the attention core computed locally (balanced), fwd / bwd
        if kind == "linear":
            return ctx.lin(fl.linear), ctx.lin(F.LINEAR_BWD_FACTOR * fl.linear)
        return ctx.attn_f(fl.attn), ctx.attn_b(F.ATTN_BWD_FACTOR * fl.attn)

    # ---- attention core: (time fwd, time bwd, compute fwd, compute bwd) ------------------------
    if s in ("ring", "zigzag") or (s == "usp" and usp and usp[1] > 1):
        if s == "usp":
            u, r = usp
            a2a = sum(ctx.t(x) for x in layer_calls("usp", m, kind, seq_len, batch, n, b, impl=impl, ulysses_degree=u)
                      if x.kind == "all_to_all" and x.phase == "forward")
            hk = _kv_heads_eff(m, u, impl, "usp")
            # after the all-to-all: u*C tokens per rank and H/u heads, zigzag over the r ring ranks
            tr = ring_transfers(r, batch, int(u * c), hk // u, m.head_dim, b, impl)
            steps, scope = r, "ring"
            blocks_pp = [per_pair / u * x for x in _pairs_per_step("usp", u * c, r, causal)]
        else:
            a2a, steps, scope = 0.0, n, "sp"
            tr = ring_transfers(n, batch, int(c), m.kv_heads, m.head_dim, b, impl)
            blocks_pp = [per_pair * p for p in _pairs_per_step(s, c, n, causal)]
        if kind == "linear" and right_product:
            bf = [2 * t_sm] * steps
            bb = [4 * t_sm] * steps
        else:
            bf = [ctx.attn_f(x) for x in blocks_pp]
            bb = [ctx.attn_b(F.ATTN_BWD_FACTOR * x) for x in blocks_pp]
        merge_f, merge_b = merge_bytes(s, impl)
        mf = [0.0] + [ctx.hbm(merge_f * dq_elems)] * (steps - 1)
        mb = [ctx.hbm(merge_b * dq_elems)] * steps
        blocks_f = [x + y for x, y in zip(bf, mf)]
        blocks_b = [x + y for x, y in zip(bb, mb)]
        cf, cb = sum(blocks_f), sum(blocks_b)
        tf = a2a + _ring_loop(blocks_f, ctx.p2p(tr["kv"], scope=scope))
        tb = (a2a + _ring_loop(blocks_b, ctx.p2p(tr["kv"] + tr["dkv"], scope=scope))
              + ctx.p2p(tr["dkv"], scope=scope))
        core = (tf, tb, cf, cb)
    elif s == "usp" or s == "ulysses":
        calls = layer_calls(s, m, kind, seq_len, batch, n, b, impl=impl, ulysses_degree=usp[0] if usp else None)
        a2a_f = sum(ctx.t(x) for x in calls if x.kind == "all_to_all" and x.phase == "forward")
        a2a_b = sum(ctx.t(x) for x in calls if x.kind == "all_to_all" and x.phase == "backward")
        cf, cb = core_local()
        core = (cf + a2a_f, cb + a2a_b, cf, cb)
    elif s == "token_ring":
        wire = token_ring_wire(m, b, impl)
        q_full, out_full = tokens * wire["forward"]["query"], tokens * wire["forward"]["result"]
        blocks = [per_pair * p for p in _pairs_per_step("token_ring", c, n, causal)]
        merge_f, merge_b = merge_bytes(s, impl)
        mf = [0.0] + [ctx.hbm(merge_f * dq_elems)] * (n - 1)
        bf = [ctx.attn_f(x) + y for x, y in zip(blocks, mf)]
        bb = [ctx.attn_b(F.ATTN_BWD_FACTOR * x) + ctx.hbm(merge_b * dq_elems) for x in blocks]
        tf = _ring_loop(bf, ctx.p2p(q_full, out_full)) + (ctx.p2p(out_full) if n > 1 else 0.0)
        bwd_q, dq = tokens * wire["backward"]["query"], tokens * wire["backward"]["result"]
        tb = _ring_loop(bb, ctx.p2p(bwd_q, dq)) + (ctx.p2p(dq) if n > 1 else 0.0)
        core = (tf, tb, sum(bf), sum(bb))
    elif s == "allgather_kv":
        calls = layer_calls(s, m, kind, seq_len, batch, n, b, impl=impl, include_weights=False)
        t_ag = sum(ctx.t(x) for x in calls if x.kind == "all_gather")
        t_rs = sum(ctx.t(x) for x in calls if x.kind == "reduce_scatter")
        cf, cb = core_local()
        core = (cf + t_ag, cb + t_rs, cf, cb)  # gathered K/V kept for backward
    elif s == "lasp2":
        st = lasp2_state_bytes(m, batch, b)
        t_ag = sum(ctx.t(x) for x in layer_calls(s, m, kind, seq_len, batch, n, b, impl=impl, include_weights=False)
                   if x.phase == "forward")
        prefix = ctx.hbm(n * st)
        cf = t_sm + lin_intra + t_sm + prefix
        cb = t_sm + 2 * lin_intra + 3 * t_sm + prefix
        # the state AllGather runs under the intra-chunk work (LASP-2's overlap)
        tf = t_sm + max(lin_intra, t_ag) + t_sm + prefix
        tb = t_sm + max(2 * lin_intra, t_ag) + 3 * t_sm + prefix
        core = (tf, tb, cf, cb)
    elif s == "lasp1":
        st = lasp1_state_bytes(m, batch)
        shape = ctx.shapes["sp"]
        inter_hops = shape.nodes - 1
        hop_in = call_time(p2p("forward", 2, send_fwd=st), ctx.hw, ctx.world.group(2))
        hop_x = call_time(p2p("forward", 2, send_fwd=st), ctx.hw, type(shape)(2, 1, 2)) if inter_hops else 0.0
        hops = (n - 1 - inter_hops) * hop_in + inter_hops * hop_x
        add = ctx.hbm(3 * st)
        cf = t_sm + lin_intra + t_sm
        cb = t_sm + 2 * lin_intra + 3 * t_sm
        core = (t_sm + lin_intra + hops + (n - 1) * (t_sm + add) + t_sm,
                t_sm + 2 * lin_intra + hops + (n - 1) * (2 * t_sm + add) + 3 * t_sm, cf, cb)
    elif s == "rsa":
        blk = 2.0 * batch * m.heads * m.head_dim * c * c  # one [C, C] x d_h product per head
        sc = batch * m.heads * c * c  # score elements per block
        k_step = next(x for x in layer_calls(s, m, kind, seq_len, batch, n, b, impl=impl, include_weights=False)
                      if x.kind == "p2p" and x.phase == "forward").send_fwd if n > 1 else 0  # one of K or V
        kb = ctx.p2p(k_step)
        k_ring = _ring_loop([ctx.gemm(blk) + ctx.hbm(4 * sc)] * n, kb)
        v_ring = _ring_loop([ctx.gemm(blk) + ctx.hbm(b * sc)] * n, kb)
        soft_f = ctx.hbm((4 + b) * n * sc)
        bwd_v = _ring_loop([2 * ctx.gemm(blk) + ctx.hbm((4 + b) * sc)] * n, kb)
        bwd_k = _ring_loop([2 * ctx.gemm(blk) + ctx.hbm(4 * sc)] * n, kb)
        soft_b = ctx.hbm((2 * b + 8) * n * sc)
        t_rs = sum(ctx.t(x) for x in layer_calls(s, m, kind, seq_len, batch, n, b, impl=impl, include_weights=False)
                   if x.kind == "reduce_scatter")
        cf = 2 * n * ctx.gemm(blk) + ctx.hbm((4 + b) * n * sc) + soft_f
        cb = 4 * n * ctx.gemm(blk) + ctx.hbm((8 + b) * n * sc) + soft_b
        core = (k_ring + soft_f + v_ring, bwd_v + soft_b + bwd_k + t_rs, cf, cb)
    elif s in ("tp_sp", "odysseus"):
        cf, cb = core_local()
        core = (cf, cb, cf, cb)
    else:
        raise ValueError(f"strategy {strategy!r} has no time model")

    # ---- projections and MLP ---------------------------------------------------------------------
    p = m.layer_params(kind)
    attn_w = sum(v for k, v in p.items() if k in ("q_proj", "k_proj", "v_proj", "o_gate_proj"))
    t_in, t_o = ctx.gemm(2 * tokens * attn_w), ctx.gemm(2 * tokens * p["o_proj"])
    t_up, t_down = ctx.gemm(2 * tokens * (p["gate_proj"] + p["up_proj"])), ctx.gemm(2 * tokens * p["down_proj"])
    gemm_c_f = t_in + t_o + t_up + t_down
    gemm_c_b = 2 * gemm_c_f
    if s in ("tp_sp", "odysseus"):
        tp = tp_gemm_calls(n, batch * seq_len // n, m.hidden, b, impl)
        ag, rs = ctx.t(tp["ag"]), ctx.t(tp["rs"])
        rg = ctx.t(tp["regather"]) if tp["regather"] else 0.0
        on = True  # our AG-GEMM / GEMM-RS overlap the transfers with the GEMM chunks
        attn_f = _overlapped(t_in, ag, n, on) + _overlapped(t_o, rs, n, on)
        attn_b = _overlapped(t_o, ag, n, on) + t_o + _overlapped(t_in, rs + rg, n, on) + t_in
        if s == "tp_sp":
            mlp_f = _overlapped(t_up, ag, n, on) + _overlapped(t_down, rs, n, on)
            mlp_b = _overlapped(t_down, ag, n, on) + t_down + _overlapped(t_up, rs + rg, n, on) + t_up
        else:
            mlp_f, mlp_b = t_up + t_down, 2 * (t_up + t_down)
            if odysseus_mlp == "zero3":
                wag, wbw = _zero3_times(ctx, [p["gate_proj"], p["up_proj"], p["down_proj"]], pb, False)
                window_f = attn_f + core[0]
                mlp_f += max(0.0, wag - window_f)
                mlp_b += max(0.0, wbw - (attn_b + core[1]))
        fwd = attn_f + mlp_f + core[0] + ew_f
        bwd = attn_b + mlp_b + core[1] + ew_b
    else:
        fwd = gemm_c_f + core[0] + ew_f
        bwd = gemm_c_b + core[1] + ew_b
        w = weights or "replicated"
        if w != "replicated":
            wag, wbw = _zero3_times(ctx, list(p.values()), pb, w == "fsdp_model")
            fwd += max(0.0, wag - fwd)  # gathers prefetched under the previous compute
            bwd += max(0.0, wbw - bwd)
    comp_f = gemm_c_f + core[2] + ew_f
    comp_b = gemm_c_b + core[3] + ew_b
    if train.recompute == "full":
        bwd += fwd
        comp_b += comp_f
    return fwd, bwd, comp_f, comp_b


def step_time(strategy: str, model: ModelConfig, seq_len: int, batch: int, world: World, dtype,
              hw: HardwareProfile, train: TrainConfig, impl: Impl, *, causal: bool = True,
              ulysses_degree: int | None = None, weights: str | None = None, odysseus_mlp: str = "zero3") -> StepTime:
    """Predicted seconds of one training step (forward, backward, gradient sync, optimizer) on the
    busiest rank.

    Args:
        strategy: one of :data:`~.strategies.STRATEGIES`; model: :class:`ModelConfig`;
        seq_len, batch: global tokens per sequence and sequences per SP group;
        world: :class:`World` (its ``sp`` ranks run the strategy, ``dp`` replicas sync gradients);
        dtype: compute/activation dtype; hw, train, impl: hardware, training set-up, implementation.
        ulysses_degree, weights, odysseus_mlp: as in :func:`~.strategies.comm_volume`.

    Returns:
        :class:`StepTime` (``total``, ``compute``, ``exposed_comm`` seconds and a breakdown).

    Example::

        >>> from odysseus_kernels.costmodel import ModelConfig, TrainConfig, World, load_hardware, OURS
        >>> t = step_time("zigzag", ModelConfig.preset("llama3-8b"), 65536, 1, World(8), "bf16",
        ...               load_hardware("h100"), TrainConfig(), OURS)
        >>> 0 < t.exposed_comm < t.compute < t.total
        True
    """
    n = world.sp
    b = dtype_bytes(dtype)
    pb = train.param_bytes or b
    usp = usp_degrees(n, model.heads, model.kv_heads, ulysses_degree) if strategy == "usp" else None
    ctx = _Ctx(hw, world, dtype, model, n, impl, usp)
    fwd = bwd = comp = 0.0
    sync = []
    bwd_layers = []
    cache: dict = {}
    for kind in model.layer_kinds():
        if kind not in cache:
            cache[kind] = layer_time(strategy, kind, ctx, seq_len, batch, b, pb, train, causal=causal, weights=weights,
                                     odysseus_mlp=odysseus_mlp, usp=usp)
            gs = [x for x in layer_calls(strategy, model, kind, seq_len, batch, n, b, param_bytes=pb, impl=impl,
                                         ulysses_degree=usp[0] if usp else None, weights=weights,
                                         odysseus_mlp=odysseus_mlp) if x.phase == "grad_sync"]
            bucket = sum(x.nbytes for x in gs)
            cache[kind] += (ctx.t(Call("all_reduce", "grad_sync", n, nbytes=bucket)) if bucket and n > 1 else 0.0,)
        f, bw, cf, cb, ar = cache[kind]
        fwd += f
        bwd += bw
        comp += cf + cb
        sync.append(ar)
        bwd_layers.append(cb)
    tokens = batch * seq_len / n
    head_f = ctx.gemm(F.head_flops_fwd(model, tokens)) + ctx.hbm(tokens * model.vocab * train.logits_bytes)
    head_b = ctx.gemm(2 * F.head_flops_fwd(model, tokens)) + ctx.hbm(tokens * model.vocab * train.logits_bytes)
    comp += head_f + head_b
    # gradient sync: per-layer buckets overlap the rest of backward, the first layer's (last) does not
    total_ar = sum(sync)
    if train.overlap_grad_sync and sync:
        exposed_sync = max(sync[0], total_ar - (sum(bwd_layers) - bwd_layers[0] + head_b))
    else:
        exposed_sync = total_ar
    emb = 0.0
    if n > 1:  # the embedding's gradient is complete last: its reduction is exposed
        kind = "all_reduce" if (weights or "replicated") == "replicated" else "reduce_scatter"
        emb = ctx.t(Call(kind, "grad_sync", n, nbytes=model.vocab * model.hidden * pb))
    dp_sync = 0.0
    if world.dp > 1:
        sharded = strategy in ("tp_sp", "odysseus") or (weights or "replicated") != "replicated"
        grads = model.params() * pb / (n if sharded else 1)
        t_dp = ctx.t(Call("all_reduce", "grad_sync", world.dp, nbytes=int(grads), scope="dp"))
        dp_sync = max(0.0, t_dp - bwd) if train.overlap_grad_sync else t_dp
    opt_params = model.params() / (n * world.dp) if train.shard_optimizer else model.params()
    per_param = {"adam": 24 + pb + (train.grad_bytes or pb), "sgd": 8 + pb + (train.grad_bytes or pb), "none": 0}
    t_opt = ctx.hbm(opt_params * per_param[train.optimizer])
    total = fwd + bwd + head_f + head_b + exposed_sync + emb + dp_sync + t_opt + train.step_overhead_s
    comp += t_opt
    parts = {"layers_fwd_s": fwd, "layers_bwd_s": bwd, "head_s": head_f + head_b,
             "grad_sync_exposed_s": exposed_sync + emb + dp_sync, "optimizer_s": t_opt,
             "overhead_s": train.step_overhead_s}
    return StepTime(total, comp, max(0.0, total - comp - train.step_overhead_s), parts)


def attention_step(strategy: str, model: ModelConfig, seq_len: int, batch: int, world: World, dtype,
                   hw: HardwareProfile, impl: Impl, *, causal: bool = True) -> dict:
    """One middle step (s >= 1) of a ring-family attention forward on the busiest rank: the block's
    compute (kernel + merge), the step's transfer, and the step time ``max`` of the two (they
    overlap). ``strategy`` in ``ring``, ``zigzag``, ``token_ring``. Seconds.

    Example::

        >>> from odysseus_kernels.costmodel import ModelConfig, World, load_hardware, OURS
        >>> m = ModelConfig(layers=1, hidden=4096, heads=32, kv_heads=32)
        >>> s = attention_step("zigzag", m, 24000, 1, World(4, 4), "bf16", load_hardware("a10"), OURS)
        >>> s["step"] >= max(s["compute"], s["comm"])
        True
    """
    if strategy not in ("ring", "zigzag", "token_ring"):
        raise ValueError(f"attention_step: expected 'ring', 'zigzag' or 'token_ring', got {strategy!r}")
    n, b = world.sp, dtype_bytes(dtype)
    ctx = _Ctx(hw, world, dtype, model, n, impl, None)
    tokens, c = batch * seq_len / n, seq_len / n
    pairs = _pairs_per_step(strategy, c, n, causal)[1]
    compute = ctx.attn_f(4.0 * batch * model.heads * model.head_dim * pairs) + ctx.hbm(
        merge_bytes(strategy, impl)[0] * tokens * model.q_dim)
    if strategy == "token_ring":
        wire = token_ring_wire(model, b, impl)["forward"]
        comm = ctx.p2p(tokens * wire["query"], tokens * wire["result"])
    else:
        comm = ctx.p2p(ring_transfers(n, batch, seq_len // n, model.kv_heads, model.head_dim, b, impl)["kv"])
    return {"compute": compute, "comm": comm, "step": max(compute, comm)}


__all__ = ["StepTime", "step_time", "layer_time", "attention_step", "merge_bytes"]
