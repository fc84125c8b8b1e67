"""Cost model (odysseus_kernels.costmodel): closed forms of every strategy, the ledger of the real ops
and collectives against the model, the physics of time and memory, hardware profiles, calibration,
the planner CLI, and the published-results validation (fails when a prediction crosses its
tolerance, so the README table cannot silently go stale)."""
import doctest
import importlib
import json
import time

import pytest

from odysseus_kernels import costmodel as cm
from tests.distributed import run_world

B, C, H, HKV, D = 2, 4, 4, 2, 8  # small shapes shared with the ledger run (world 4: L = 16)
SMALL = cm.ModelConfig(name="small", layers=1, hidden=H * D, heads=H, kv_heads=HKV, head_dim=D, intermediate=48,
                       vocab_size=64)
DTYPES = [pytest.param("float32", 4, id="fp32"), pytest.param("bf16", 2, id="bf16"),
          pytest.param("float64", 8, id="fp64")]
WORLDS = [pytest.param(n, id=f"N{n}") for n in (2, 3, 4, 8)]


def _acc(b):
    return 8 if b == 8 else 4


def _vol(strategy, n, dtype, model=SMALL, L=None, **kw):
    return cm.comm_volume(strategy, model, C * n * 2 if L is None else L, B, n, dtype, **kw)


# ---- closed forms ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", WORLDS)
@pytest.mark.parametrize("dtype, b", DTYPES)
@pytest.mark.parametrize("strategy", ["ring", "zigzag"])
def test_ring_forward_is_2_n_minus_1_over_n_B_L_dkv_b(strategy, n, dtype, b):
    L = 2 * C * n
    v = _vol(strategy, n, dtype, include_weights=False)
    fwd = 2 * (n - 1) * B * L * HKV * D * b // n
    assert v.received("p2p", "forward") == v.sent("p2p", "forward") == fwd
    # backward: K, V again plus the fp32 dK/dV accumulators, N-1 hops each
    assert v.received("p2p", "backward") == fwd + 2 * (n - 1) * B * (L // n) * HKV * D * _acc(b)
    assert v.received() == v.received("p2p")


@pytest.mark.parametrize("n", [pytest.param(2, id="N2"), pytest.param(4, id="N4")])
@pytest.mark.parametrize("dtype, b", DTYPES[:2])
def test_ulysses_is_four_all_to_alls_of_the_local_q_k_v_o(n, dtype, b):
    T = B * 2 * C
    v = _vol("ulysses", n, dtype, include_weights=False)
    kvh = HKV if HKV % n == 0 else n  # fewer kv heads than ranks: replicated up to N
    local = T * D * b * (2 * H + 2 * kvh)  # q, o and k, v
    assert v.received("all_to_all", "forward") == local * (n - 1) // n
    assert v.received("all_to_all", "backward") == local * (n - 1) // n
    assert v.as_dict()["forward"]["all_to_all"]["calls"] == 4


def test_usp_moves_ulysses_all_to_alls_in_its_group_and_a_ring_across():
    n, u, r, b = 8, 2, 4, 2
    T = B * 2 * C
    v = _vol("usp", n, "bf16", ulysses_degree=u, include_weights=False)
    assert v.received("all_to_all", "forward") == T * D * b * (2 * H + 2 * HKV) * (u - 1) // u
    kv = T * HKV * D * b  # after the all-to-all: u*T tokens of HKV/u heads
    assert v.received("p2p", "forward") == 2 * (r - 1) * kv
    assert v.received("p2p", "backward") == 2 * (r - 1) * kv + 2 * (r - 1) * T * HKV * D * 4


@pytest.mark.parametrize("n", WORLDS)
def test_token_ring_zigzag_sends_three_quarters_of_a_q_rotation(n):
    b = 2
    L = 2 * C * n
    T = B * C * 2
    per_rank = [_vol("token_ring", n, "bf16", rank=r, include_weights=False) for r in range(n)]
    wire = cm.strategies.token_ring_wire(SMALL, b)  # per query row: Q out; fp32 (out, lse) back
    assert wire["forward"] == {"query": H * D * b, "result": H * (D * 4 + 4)}
    assert wire["backward"] == {"query": H * (2 * D * b + 2 * 4), "result": H * D * 4}
    fwd = [v.received("p2p", "forward") for v in per_rank]
    # on average 3/4 of a full rotation of queries one way and of partial results the other
    assert sum(fwd) / n == pytest.approx(0.75 * (n - 1) * T * (wire["forward"]["query"] + wire["forward"]["result"]))
    # rank-dependent: rank r receives (N-1)C - rC/2 query rows and (N-1)C/2 + rC/2 result rows
    for r, got in enumerate(fwd):
        rows_in, rows_back = (n - 1) * T - r * T / 2, (n - 1) * T / 2 + r * T / 2
        assert got == rows_in * wire["forward"]["query"] + rows_back * wire["forward"]["result"]
        # and sends what its mirror rank N-1-r receives
        assert per_rank[r].sent("p2p", "forward") == fwd[n - 1 - r]
    # no mask: every step moves all local queries one way and all (fp32 out, lse) the other way
    full = _vol("token_ring", n, "bf16", L=L, causal=False, include_weights=False)
    assert full.received("p2p", "forward") == (n - 1) * T * H * (D * b + D * 4 + 4)
    # the default (rank=None) is the busiest rank
    assert _vol("token_ring", n, "bf16", include_weights=False).received() == max(v.received() for v in per_rank)


@pytest.mark.parametrize("n", WORLDS)
@pytest.mark.parametrize("dtype, b", DTYPES)
def test_allgather_kv_and_rsa(n, dtype, b):
    T = B * 2 * C
    kv = T * HKV * D
    v = _vol("allgather_kv", n, dtype, include_weights=False)
    assert v.received("all_gather", "forward") == 2 * (n - 1) * kv * b
    assert v.received("reduce_scatter", "backward") == 2 * (n - 1) * kv * _acc(b)
    rsa = _vol("rsa", n, dtype, include_weights=False)
    assert rsa.received("p2p", "forward") == rsa.received("p2p", "backward") == 2 * (n - 1) * kv * b
    assert rsa.received("reduce_scatter", "backward") == 2 * (n - 1) * kv * _acc(b)


@pytest.mark.parametrize("n", WORLDS)
def test_lasp2_is_one_state_all_gather_independent_of_length(n):
    m = SMALL.with_(linear_layers="all")
    state = B * H * D * D * 4
    for L in (2 * n, 64 * n):
        v = cm.comm_volume("lasp2", m, L, B, n, "bf16", include_weights=False)
        assert v.received("all_gather", "forward") == v.received("all_gather", "backward") == (n - 1) * state
        assert v.received() == 2 * (n - 1) * state


def test_lasp1_is_a_chain():
    n, m = 4, SMALL.with_(linear_layers="all")
    state = B * H * D * D * 4
    first, mid, last = (cm.comm_volume("lasp1", m, 16, B, n, "bf16", rank=r, include_weights=False) for r in (0, 1, 3))
    assert (first.received(phase="forward"), first.received(phase="backward")) == (0, state)
    assert (mid.received(phase="forward"), mid.received(phase="backward")) == (state, state)
    assert (last.received(phase="forward"), last.sent(phase="forward")) == (state, 0)


@pytest.mark.parametrize("n", [pytest.param(2, id="N2"), pytest.param(4, id="N4")])
def test_tp_sp_and_odysseus(n):
    b, m = 2, SMALL.with_(kv_heads=4)
    L = 4 * n
    T = B * L // n
    x = T * m.hidden * b
    tp = cm.comm_volume("tp_sp", m, L, B, n, "bf16")
    assert tp.received("all_gather", "forward") == 2 * (n - 1) * x  # attention + MLP inputs
    assert tp.received("reduce_scatter", "forward") == 2 * (n - 1) * x  # o_proj and down_proj outputs
    assert tp.received("all_gather", "backward") == tp.received("reduce_scatter", "backward") == 2 * (n - 1) * x
    regather = cm.comm_volume("tp_sp", m, L, B, n, "bf16", impl=cm.OURS.with_(tp_save_gathered=False))
    assert regather.received("all_gather", "backward") == 4 * (n - 1) * x
    assert cm.comm_volume("tp_sp", m, L, B, n, "bf16", impl=cm.PUBLISHED["megatron"]).by_kind() == regather.by_kind()
    ring = cm.comm_volume("tp_sp", m, L, B, n, "bf16", impl=cm.OURS.with_(tp_impl="ring"))
    assert ring.by_kind(("forward", "backward")) == {"p2p": (8 * (n - 1) * x, 8 * (n - 1) * x)}
    norms = 2 * (2 * m.hidden * b * (n - 1) // n)  # two RMSNorm weights all-reduced
    assert tp.received(phase="grad_sync") == norms
    ody = cm.comm_volume("odysseus", m, L, B, n, "bf16")
    mlp = 3 * m.intermediate * m.hidden * b  # gate, up, down
    assert ody.received("all_gather", "forward") == (n - 1) * x + (n - 1) * mlp // n
    assert ody.received("reduce_scatter", "backward") == (n - 1) * x + mlp * (n - 1) // n


@pytest.mark.parametrize("n", WORLDS)
def test_replicated_weights_sync_every_tensor_and_zero3_gathers_them(n):
    v = _vol("ring", n, "bf16")
    want = sum(2 * p * 2 * (n - 1) // n for p in SMALL.layer_params().values())
    assert v.received("all_reduce", "grad_sync") == want
    z = _vol("ring", n, "bf16", weights="zero3")
    assert z.received(phase="grad_sync") == 0
    assert z.received("all_gather", "forward") == sum((n - 1) * (2 * p // n) for p in SMALL.layer_params().values())


@pytest.mark.parametrize("dtype, b", DTYPES)
def test_volumes_are_the_ops_closed_forms(dtype, b):
    """One place per formula: what the cost model predicts for our ops is what their closed forms say."""
    from odysseus_kernels.ops.attention import (allgather_kv_comm_bytes, ring_comm_bytes, rsa_comm_bytes,
                                                token_ring_comm_bytes, ulysses_comm_bytes)
    from odysseus_kernels.ops.lasp2 import lasp2_comm_bytes
    from odysseus_kernels.ops.tp_gemm import tp_gemm_comm_bytes

    n, c = 4, 2 * C
    kw = dict(include_weights=False)

    def got(strategy, kind, phase, model=SMALL, **extra):
        return _vol(strategy, n, dtype, model=model, **kw, **extra).received(kind, phase)

    for phase in ("forward", "backward"):
        assert got("ring", "p2p", phase) == ring_comm_bytes(n, B, c, HKV, D, b)[phase]
        assert got("rsa", "p2p", phase) == rsa_comm_bytes(n, B, c, HKV, D, b)[phase]
        assert got("ulysses", "all_to_all", phase) == ulysses_comm_bytes(n, B, c, H, HKV, D, b)[phase]
        kind = "all_gather" if phase == "forward" else "reduce_scatter"
        assert got("allgather_kv", kind, phase) == allgather_kv_comm_bytes(n, B, c, HKV, D, b)[phase]
        lin = SMALL.with_(linear_layers="all")
        assert got("lasp2", "all_gather", phase, model=lin) == lasp2_comm_bytes(n, B, H, D, D, b)[phase]
        for r in range(n):
            assert got("token_ring", "p2p", phase, rank=r) == token_ring_comm_bytes(n, r, B, c, H, D, b, "zigzag",
                                                                                    True)[phase]
    assert got("rsa", "reduce_scatter", "backward") == rsa_comm_bytes(n, B, c, HKV, D, b)["backward_reduce_scatter"]
    m = SMALL.with_(kv_heads=4)
    tp = tp_gemm_comm_bytes(n, B * c, m.hidden, m.hidden, b)
    v = _vol("tp_sp", n, dtype, model=m)  # two AG-GEMMs and two GEMM-RSs per layer (attention, MLP)
    assert v.received(("all_gather", "reduce_scatter"), "forward") == 2 * (tp["all_gather_linear"]
                                                                           + tp["linear_reduce_scatter"])
    assert v.received(("all_gather", "reduce_scatter"), "backward") == 2 * (tp["all_gather_linear_backward"]
                                                                            + tp["linear_reduce_scatter_backward"])


def test_impl_holds_only_the_ops_arguments_and_merges_follow_the_kernels():
    import dataclasses

    assert {f.name for f in dataclasses.fields(cm.Impl)} == {"tp_impl", "tp_save_gathered"}
    with pytest.raises(ValueError, match="tp_impl"):
        cm.Impl(tp_impl="nccl")
    # ring attention's Triton path merges (out, lse) and accumulates dQ/dK/dV inside the kernel;
    # TokenRing's owner merges returned partials outside it; ring-flash-attn merges in eager PyTorch
    assert cm.timing.merge_bytes("zigzag", cm.OURS) == (0.0, 0.0)
    assert cm.timing.merge_bytes("token_ring", cm.OURS) == (12.0, 12.0)
    assert cm.timing.merge_bytes("ring", cm.PUBLISHED["ring-flash-attn"]) == (38.0, 30.0)
    # a published system changes only what it describes: ring-flash-attn's fp32 dK/dV travel N hops
    n = 4
    ours, theirs = (_vol("ring", n, "bf16", include_weights=False, impl=i)
                    for i in (None, cm.PUBLISHED["ring-flash-attn"]))
    kv = B * 2 * C * HKV * D
    assert theirs.received("p2p", "forward") == ours.received("p2p", "forward")
    assert theirs.received("p2p", "backward") == ours.received("p2p", "forward") + 2 * n * kv * 4
    # a TokenRing "published" with our own wire formats moves exactly our bytes, rank by rank
    same = cm.Published(name="ours again", token_ring_out_bytes=4, token_ring_stats_bytes=4)
    for r in range(n):
        a, b = (_vol("token_ring", n, "bf16", include_weights=False, rank=r, impl=i) for i in (None, same))
        assert a.by_kind() == b.by_kind(), r


def test_ledger_formulas_floor_like_the_ledger():
    assert cm.Call("reduce_scatter", "forward", 3, nbytes=10).ledger_bytes() == (6, 6)
    assert cm.Call("all_to_all", "forward", 3, nbytes=10, out_nbytes=20).ledger_bytes() == (6, 13)
    assert cm.Call("all_reduce", "forward", 4, nbytes=1).ledger_bytes() == (1, 1)
    assert cm.Call("all_gather", "forward", 1, nbytes=10).ledger_bytes() == (0, 0)


def test_a_world_of_one_moves_nothing_and_hybrids_need_a_layer():
    assert _vol("ring", 1, "bf16").received() == 0
    hyb = SMALL.with_(layers=4, linear_layers="hybrid", hybrid_ratio=3)
    with pytest.raises(ValueError, match="layer"):
        cm.comm_volume("lasp2h", hyb, 16, B, 4, "bf16")
    total = cm.comm_volume("lasp2h", hyb, 16, B, 4, "bf16", layer="all", include_weights=False).received()
    lin = cm.comm_volume("lasp2h", hyb, 16, B, 4, "bf16", layer=0, include_weights=False).received()
    soft = cm.comm_volume("lasp2h", hyb, 16, B, 4, "bf16", layer=3, include_weights=False).received()
    assert total == 3 * lin + soft


@pytest.mark.parametrize("args, match", [
    pytest.param(("nope", SMALL, 16, 4), "strategy", id="unknown-strategy"),
    pytest.param(("ulysses", SMALL.with_(heads=6, kv_heads=6, hidden=48), 16, 4), "ulysses", id="ulysses-heads"),
    pytest.param(("zigzag", SMALL, 12, 4), "divisible by 8", id="zigzag-length"),
    pytest.param(("lasp2", SMALL, 16, 4), "linear", id="lasp2-softmax-model"),
    pytest.param(("token_ring", SMALL.with_(linear_layers="all"), 16, 4), "softmax", id="token-ring-linear"),
])
def test_impossible_configurations_raise_naming_the_strategy(args, match):
    s, m, L, n = args
    with pytest.raises(ValueError, match=match):
        cm.comm_volume(s, m, L, B, n, "bf16")
    assert not cm.predict(s, m, L, world=n).feasible or s == "nope"


# ---- the ledger of the real ops and collectives equals the model ------------------------------

def _ledger_cases():
    import torch

    import odysseus_kernels as ok
    from odysseus_kernels import comm
    from odysseus_kernels.ops.attention import (allgather_kv_attention, ring_attention, ring_self_attention,
                                                token_ring_attention, ulysses_attention, usp_attention, usp_groups)

    info = comm.group_info()
    n = info.size
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(B, C * n, h, D, generator=g) for h in (H, HKV, HKV, H)]
    groups = usp_groups(2)
    usp = lambda q, k, v, **kw: usp_attention(q, k, v, ulysses_group=groups.ulysses_group,  # noqa: E731
                                              ring_group=groups.ring_group, **kw)
    ops = {"ring": ring_attention, "zigzag": ring_attention, "token_ring": token_ring_attention,
           "ulysses": ulysses_attention, "usp": usp, "allgather_kv": allgather_kv_attention, "rsa": ring_self_attention}
    out = {}
    for name, fn in ops.items():
        for layout in ("contiguous", "zigzag"):
            if name in ("ring", "zigzag") and layout != ("zigzag" if name == "zigzag" else "contiguous"):
                continue
            q, k, v, do = (ok.shard_sequence(t, layout=layout) for t in full)
            q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
            with ok.comm_ledger() as led:
                fn(q, k, v, causal=True, layout=layout).backward(do)
            out[(name, layout)] = led.as_dict()
    x = torch.ones(3, 5)
    with ok.comm_ledger() as led:
        comm.all_gather(x)
        comm.reduce_scatter(torch.ones(3 * n, 5))
        comm.all_to_all(torch.ones(3 * n, 5))
        comm.all_reduce(torch.ones(1, dtype=torch.uint8))
        comm.ring_exchange(x, torch.empty_like(x), x[:1].clone(), torch.empty(1, 5)).wait()
    out[("collectives", None)] = led.as_dict()
    return out


def test_ledger_of_every_attention_op_equals_the_model():
    n = 4
    for rank, cases in enumerate(run_world(_ledger_cases, n, timeout=600)):
        for (name, layout), led in cases.items():
            if name == "collectives":
                want = cm.CommVolume([cm.Call("all_gather", "forward", n, nbytes=60),
                                      cm.Call("reduce_scatter", "forward", n, nbytes=60 * n),
                                      cm.Call("all_to_all", "forward", n, nbytes=60 * n),
                                      cm.Call("all_reduce", "forward", n, nbytes=1),
                                      cm.strategies.p2p("forward", n, send_fwd=60, send_bwd=20)])
            else:
                want = cm.comm_volume(name, SMALL, C * n, B, n, "float32", rank=rank, layout=layout,
                                      ulysses_degree=2 if name == "usp" else None, include_weights=False)
            assert not want.diff(led), f"{name}/{layout} rank {rank}: {want.diff(led)}"


# ---- time and memory ---------------------------------------------------------------------------

def test_zigzag_balances_causal_work_and_ring_steps_hide_transfers():
    kw = dict(world=8, hardware="a100")
    ring, zig = (cm.predict(s, "llama3-8b", "128K", **kw) for s in ("ring", "zigzag"))
    assert ring.step_time_s > 1.3 * zig.step_time_s  # rank N-1 does ~2x the average causal work
    assert zig.time.exposed_comm < 0.05 * zig.step_time_s  # NVLink: K/V transfer hides under the block
    assert cm.causal_pairs("ring", 64, 8) == pytest.approx((8 - 0.5) * 64)
    assert cm.causal_pairs("zigzag", 64, 8) == pytest.approx(64 * 64 / 16)


def test_token_ring_halves_the_step_when_the_link_is_the_bottleneck():
    m = cm.ModelConfig(layers=1, hidden=4096, heads=32, kv_heads=32)
    hw, w = cm.load_hardware("a10-pcie"), cm.World(4, 4)
    ring = cm.attention_step("zigzag", m, 24000, 1, w, "bf16", hw, cm.OURS)
    tok = cm.attention_step("token_ring", m, 24000, 1, w, "bf16", hw, cm.PUBLISHED["tokenring-paper"])
    assert ring["comm"] > ring["compute"] and tok["step"] < 0.6 * ring["step"]


def test_lasp2_beats_lasp1_and_its_traffic_does_not_grow_with_length():
    m = "linear-llama3-1b"
    a, b = (cm.predict("lasp2", m, L, world=64) for L in ("256K", "1M"))
    assert a.comm_per_layer_bytes == b.comm_per_layer_bytes
    assert cm.predict("lasp1", m, "1M", world=64).step_time_s > b.step_time_s


def test_memory_rsa_is_quadratic_recompute_and_sharding_save():
    small = cm.predict("rsa", "llama2-7b", "16K", world=8).memory.activations
    big = cm.predict("rsa", "llama2-7b", "32K", world=8).memory.activations
    assert big / small > 3.0  # score rows H*L per local token: 2x tokens x 2x rows
    base = cm.predict("zigzag", "llama3-8b", "64K", world=8)
    rec = cm.predict("zigzag", "llama3-8b", "64K", world=8, train=cm.TrainConfig(recompute="full"))
    assert rec.memory.activations < 0.3 * base.memory.activations
    assert rec.step_time_s > base.step_time_s
    z3 = cm.predict("zigzag", "llama3-8b", "64K", world=8, weights="zero3")
    assert z3.memory.params == pytest.approx(base.memory.params / 8)


def test_plan_ranks_fitting_strategies_first_and_explains_the_rest():
    t0 = time.perf_counter()
    ranked = cm.plan("llama3-8b", "64K", 16, hardware="h100")
    assert time.perf_counter() - t0 < 5
    feas = [p for p in ranked if p.feasible]
    fit = [p for p in feas if p.fits]
    assert fit and ranked[:len(fit)] == fit
    assert [p.step_time_s for p in fit] == sorted(p.step_time_s for p in fit)
    assert all(p.note for p in ranked if not p.feasible)
    assert "lasp2: needs" in cm.format_plan(ranked) and "zigzag" in [p.strategy for p in fit]


def test_step_time_and_tokens_scale_sensibly():
    t = [cm.predict("zigzag", "llama3-8b", L, world=8).step_time_s for L in ("32K", "64K", "128K")]
    assert t[0] < t[1] < t[2] and t[2] / t[1] > 1.5  # attention's quadratic share grows
    one, two = (cm.predict("zigzag", "llama3-8b", "128K", world=g) for g in (8, 16))
    assert one.step_time_s / two.step_time_s > 1.6  # twice the GPUs: nearly twice as fast


# ---- hardware, calibration ----------------------------------------------------------------------

def test_hardware_profiles_are_data_and_overridable(tmp_path):
    a100 = cm.load_hardware("a100-80gb-sxm")
    assert a100.peak_flops("bf16") == 312e12 and a100.inter.p2p_gbps < a100.intra.p2p_gbps
    h = a100.with_overrides(gemm_eff=0.5, intra={"latency_us": 1.0}, inter_p2p_gbps=11.0)
    assert (h.gemm_eff, h.intra.latency_us, h.inter.p2p_gbps) == (0.5, 1.0, 11.0)
    f = tmp_path / "hw.json"
    f.write_text(json.dumps({"base": "h100", "hbm_gbps": 2500.0}))
    assert cm.load_hardware(str(f)).hbm_gbps == 2500.0
    f.write_text(json.dumps(cm.load_hardware("a10").to_dict()))
    assert cm.load_hardware(str(f)) == cm.load_hardware("a10")
    with pytest.raises(ValueError, match="unknown field 'gemm'"):
        a100.with_overrides(gemm=1)
    with pytest.raises(ValueError, match="hardware"):
        cm.load_hardware("tpu")


def test_calibration_files_set_achieved_rates(tmp_path):
    cm.write_calibration(str(tmp_path / "h100.json"), "NVIDIA H100 80GB HBM3",
                         [{"kind": "gemm", "dtype": "bf16", "tflops": 700.0},
                          {"kind": "gemm", "dtype": "bf16", "tflops": 760.0},
                          {"kind": "gemm", "dtype": "bf16", "tflops": 800.0},
                          {"kind": "inter_p2p", "gbps": 40.0}], commit="abc")
    cm.write_calibration(str(tmp_path / "a100.json"), "NVIDIA A100-SXM4-80GB", [{"kind": "hbm", "gbps": 1.0}])
    (tmp_path / "other.json").write_text(json.dumps({"results": []}))
    hw, report = cm.calibrate("h100", str(tmp_path))
    assert hw.gemm_eff == pytest.approx(760 / 989) and hw.inter.p2p_gbps == 40.0
    assert hw.hbm_gbps == cm.load_hardware("h100").hbm_gbps  # the A100 file was not applied
    assert sum("skipped" in r for r in report) == 2
    assert cm.profile_for_device("NVIDIA A10") == "a10-pcie"


def test_calibration_without_results_keeps_the_defaults_and_says_so(tmp_path):
    default = cm.load_hardware("a100")
    (tmp_path / "compile_gate").mkdir()  # results of other benchmarks only: no calibration data
    (tmp_path / "attention.json").write_text(json.dumps({"rows": []}))
    for paths in (str(tmp_path / "missing"), str(tmp_path), []):
        hw, report = cm.calibrate("a100", paths)
        assert hw == default, paths
        assert report[-1] == f"no calibration data found: using the documented defaults of {default.name}", report
    _, report = cm.calibrate("a100", str(tmp_path / "missing"))
    assert "no such file or directory" in report[0]


def test_import_odysseus_kernels_does_not_import_the_cost_model():
    import subprocess
    import sys

    code = ("import sys, odysseus_kernels as ok\n"
            "assert 'odysseus_kernels.costmodel' not in sys.modules\n"
            "assert 'matplotlib' not in sys.modules\n"
            "assert ok.costmodel.plan and 'odysseus_kernels.costmodel' in sys.modules\n"
            "assert 'matplotlib' not in sys.modules\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ---- CLI, playground hook ------------------------------------------------------------------------

def test_cli_plan_prints_a_ranked_table_and_writes_json(tmp_path, capsys):
    from odysseus_kernels.costmodel.__main__ import main

    out = tmp_path / "plan.json"
    assert main(["plan", "--model", "linear-llama3-1b", "--seq-len", "2M", "--gpus", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    first = [line for line in text.splitlines() if line.startswith("1 ")][0]
    assert "lasp2" in first
    data = json.loads(out.read_text())
    assert data["predictions"][0]["strategy"] == "lasp2" and data["seq_len"] == 2**21


def test_cli_png_or_a_message_when_matplotlib_is_missing(tmp_path, capsys):
    from odysseus_kernels.costmodel.__main__ import main

    png = tmp_path / "plan.png"
    assert main(["plan", "--model", "llama3-8b", "--seq-len", "64K", "--gpus", "8", "--strategies",
                 "zigzag,ulysses", "--png", str(png)]) == 0
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    assert png.exists() == has_mpl
    if not has_mpl:
        assert "matplotlib not installed" in capsys.readouterr().out


def test_cli_other_commands_and_errors(capsys):
    from odysseus_kernels.costmodel.__main__ import main

    assert main(["comm", "--strategy", "ring", "--model", "llama3-8b", "--seq-len", "128K", "--gpus", "8"]) == 0
    assert "p2p" in capsys.readouterr().out
    assert main(["hardware"]) == 0 and "a10-pcie" in capsys.readouterr().out
    assert main(["hardware", "h100"]) == 0 and json.loads(capsys.readouterr().out)["name"] == "h100-sxm"
    assert main(["plan", "--model", "gpt5", "--seq-len", "2M", "--gpus", "8"]) == 2
    assert "model: expected one of" in capsys.readouterr().err
    assert main(["plan", "--model", "llama3-8b", "--seq-len", "lots", "--gpus", "8"]) == 2


def test_playground_theory_column():
    from odysseus_kernels.playground.runner import RunConfig

    rc = RunConfig(layers=2, hidden=64, heads=4, kv_heads=4, intermediate=128, vocab=128, hybrid_ratio=1, seq_len=64,
                   batch=1, dtype="float32")
    got = cm.playground_comm_per_layer("zigzag", rc, 4)
    assert got == 2 * 3 * 64 * 64 * 4 // 4 * 2 + 2 * 3 * 16 * 64 * 4 * 2 // 2  # fwd K,V + bwd K,V + fp32 dK,dV
    hyb = cm.playground_comm_per_layer("lasp2h", rc, 4)
    model = cm.ModelConfig(layers=2, hidden=64, heads=4, kv_heads=4, intermediate=128, vocab_size=128,
                           linear_layers="hybrid", hybrid_ratio=1)
    assert cm.ModelConfig.from_llama_config(rc.model_config("lasp2h")) == model  # one shape, one rule set
    total = cm.comm_volume("lasp2h", model, 64, 1, 4, "float32", layer="all")
    assert hyb == total.received(phase=("forward", "backward")) / 2


def test_docstring_examples_run():
    names = ["config", "hardware", "collectives", "strategies", "flops", "memory", "timing", "planner", "calibration",
             "validation"]
    for name in names:
        mod = importlib.import_module(f"odysseus_kernels.costmodel.{name}")
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0, f"{name}: {res.failed} docstring example(s) failed"
    assert doctest.testmod(cm).failed == 0


# ---- validation against published results ---------------------------------------------------------

CHECKS = cm.validate()


@pytest.mark.parametrize("check", [pytest.param(c, id=c.quantity) for c in CHECKS])
def test_published_result(check):
    """A hit must stay within tolerance; a documented miss must stay a miss (and its README row
    explained) -- either change means the validation table needs revisiting."""
    assert check.status == check.expect, (
        f"{check.experiment}: {check.quantity}: published {check.published}, predicted {check.predicted} "
        f"(error {check.rel_error}), expected a {check.expect}")


def test_validation_table_renders_every_check():
    table = cm.markdown(CHECKS)
    assert table.count("\n") == len(CHECKS) + 1
    assert sum(c.expect == "hit" for c in CHECKS) >= 30
