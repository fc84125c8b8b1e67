"""Sequence-parallel softmax attention (ring, zigzag, TokenRing, Ulysses, USP, all-gather-KV):
output and dq, dk, dv against float64 attention of the whole sequence on one device, the exact
communication volume of each op, zigzag balance and bad inputs, on world sizes 1-4."""
import itertools

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels import comm
from odysseus_kernels.kernels.attention import attention_block_fwd, attention_ref
from odysseus_kernels.ops.attention import (
    allgather_kv_attention,
    allgather_kv_comm_bytes,
    ring_attention,
    ring_comm_bytes,
    ring_self_attention,
    rsa_comm_bytes,
    token_ring_attention,
    token_ring_comm_bytes,
    ulysses_attention,
    ulysses_comm_bytes,
    usp_attention,
    usp_groups,
)
from odysseus_kernels.ops.attention.blocks import Mask, plan_blocks, ring_steps
from odysseus_kernels.ops.layout import layout_spans
from tests.distributed import run_world, world_cached
from tests.triton_device import needs_interpreter

# (atol, rtol) per dtype against the float64 reference
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 3e-2)}
WORLD_SIZES = [pytest.param(n, id=f"N{n}") for n in (1, 2, 3, 4)]


OPS = {"ring": ring_attention, "token_ring": token_ring_attention, "allgather_kv": allgather_kv_attention,
       "ulysses": ulysses_attention, "rsa": ring_self_attention, "usp": None}
LAYOUTS = ("contiguous", "zigzag")


def _op_names(n):
    """The ops that run on a world of n (USP: Ulysses degree 2, so even worlds)."""
    return [name for name in OPS if name != "usp" or n % 2 == 0]


def _usp_degree(n):
    """USP's Ulysses degree on a world of n: 2 on even worlds; on 3 ranks 3 (a ring of one)."""
    return 2 if n % 2 == 0 else n


def _op(name):
    """Worker side: the op as ``fn(q, k, v, **kw)`` (USP on groups made once per world)."""
    if name != "usp":
        return OPS[name]
    deg = _usp_degree(comm.group_info().size)
    g = world_cached(("usp_groups", deg), lambda: usp_groups(deg))
    return lambda q, k, v, **kw: usp_attention(q, k, v, ulysses_group=g.ulysses_group, ring_group=g.ring_group, **kw)


def _ops(n):
    """Worker side: (name, fn(q, k, v, **kw), layouts) for the ops that run on a world of n."""
    return [(name, _op(name), LAYOUTS) for name in _op_names(n)]


def _inputs(seed, b, L, h, hkv, d, dtype):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(b, L, h, d), mk(b, L, hkv, d), mk(b, L, hkv, d), mk(b, L, h, d)


def _params(cases_of, ident):
    """One pytest param per (world size, case): ``cases_of(n)`` lists the cases, ``ident`` names one."""
    return [pytest.param(n, case, id=f"N{n}-{ident(*case)}") for n in (1, 2, 3, 4) for case in cases_of(n)]


SHAPES = {"MHA-D12": (2, 4, 4, 12), "GQA-D8": (1, 4, 2, 8)}  # id -> (b, h, hkv, d)
ODD_SHAPES = {"GQA-H6-D5": (1, 6, 3, 5)}  # odd head dim and head counts: Ulysses and USP on 3 ranks (float64)


def _numerics_cases(n):
    """Every op x layout x (MHA, GQA) x causal x dtype that runs on a world of n; the odd shapes in
    float64 (with USP at Ulysses degree 3 on 3 ranks)."""
    cases = []
    runs = [(_op_names(n), SHAPES, ("float32", "float64", "bfloat16")),
            (_op_names(n) + (["usp"] if n == 3 else []), ODD_SHAPES, ("float64",))]
    for names, shapes, dtypes in runs:
        for name, (sid, (b, h, hkv, d)), causal, dtype in itertools.product(names, shapes.items(), (False, True), dtypes):
            deg = _usp_degree(n) if name == "usp" else n
            if name in ("ulysses", "usp") and (hkv % deg and deg % hkv or h % deg):
                continue
            cases += [(name, layout, sid, causal, dtype) for layout in LAYOUTS]
    return cases


def _check_numerics(seed, name, layout, sid, causal, dtype, device="cpu"):
    """One case of :func:`_numerics_cases`: the max error ratio (<= 1 passes) of out, dq, dk, dv;
    the inputs are never overwritten, the outputs have the input dtype and no NaN. ``device="cuda"``:
    the ranks' shards on the GPU (the float64 reference stays on the CPU)."""
    n = comm.group_info().size
    fn, (b, h, hkv, d), dtype = _op(name), {**SHAPES, **ODD_SHAPES}[sid], getattr(torch, dtype)
    L = 4 * n if layout == "zigzag" else 3 * n  # seq_local 4 (zigzag: 2 chunks of 2) or 3 (odd)
    q, k, v, do = _inputs(seed, b, L, h, hkv, d, dtype)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    ref = attention_ref(qr, kr, vr, causal=causal)
    ref.backward(do)
    sh = lambda t: ok.shard_sequence(t, layout=layout).to(device, dtype)  # noqa: E731
    ql, kl, vl = (sh(t).requires_grad_(True) for t in (q, k, v))
    out = fn(ql, kl, vl, causal=causal, layout=layout)
    out.backward(sh(do))
    for t, orig in ((ql, q), (kl, k), (vl, v)):  # inputs are never overwritten
        assert torch.equal(t.detach(), sh(orig)), f"{name} modified its input"
    atol, rtol = TOL[dtype]
    worst = 0.0
    for got, want in ((out, ref.detach()), (ql.grad, qr.grad), (kl.grad, kr.grad), (vl.grad, vr.grad)):
        assert got.dtype == dtype and got.device.type == device and not got.isnan().any()
        want = ok.shard_sequence(want, layout=layout)
        err = ((got.double().cpu() - want).abs() / (atol + rtol * want.abs())).max().item()
        worst = max(worst, err)
    return worst


def _cuda_on_gloo_cases(n):
    """On CUDA tensors, zigzag, GQA: every op causal in bf16 on 2 ranks; the P2P and all-gather ops on 3
    ranks, and the ring also non-causal in fp32 (few cases: each world compiles its kernels again)."""
    names = _op_names(n) if n == 2 else ("ring", "token_ring", "allgather_kv")
    return [(name, layout, sid, causal, dtype) for name, layout, sid, causal, dtype in _numerics_cases(n)
            if layout == "zigzag" and sid == "GQA-D8" and name in names
            and ((causal and dtype == "bfloat16") or (name, causal, dtype) == ("ring", False, "float32"))]


@pytest.mark.cuda
@pytest.mark.parametrize("n, case", [p for p in _params(
    _cuda_on_gloo_cases, lambda name, layout, sid, causal, dtype: f"{name}-{'causal' if causal else 'full'}-{dtype}")
    if p.values[0] in (2, 3)])
def test_ops_on_cuda_tensors_over_gloo_ranks_sharing_the_gpu(n, case):
    """Several gloo ranks on one GPU (P2P through host memory, collectives on the CUDA tensors):
    the default backend on CUDA against float64 attention."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    per_rank = run_world(_check_numerics, n, 7 + n, *case, "cuda", timeout=600)
    assert all(err <= 1.0 for err in per_rank), f"error / tolerance on each rank: {per_rank}"


@pytest.mark.parametrize("n, case", _params(
    _numerics_cases, lambda name, layout, sid, causal, dtype: f"{name}-{layout}-{sid}-"
                                                              f"{'causal' if causal else 'full'}-{dtype}"))
def test_outputs_and_gradients_match_float64_attention(n, case):
    per_rank = run_world(_check_numerics, n, 7 + n, *case, timeout=600)
    assert all(err <= 1.0 for err in per_rank), f"error / tolerance on each rank: {per_rank}"


def test_every_world_size_has_its_cases():
    """The case lists (built on the host) cover every op that runs on each world size."""
    for n in (1, 2, 3, 4):
        ops = set(_op_names(n)) - ({"ulysses"} if 4 % n else set())  # Ulysses needs the 4 heads to divide
        # the numerics also run every op on 3 ranks (odd shapes: Ulysses, and USP at degree 3)
        assert {c[0] for c in _numerics_cases(n)} == set(_op_names(n)) | ({"usp"} if n == 3 else set()), n
        assert {c[0] for c in _window_cases(n)} == ops - {"rsa"}, n
        assert {c[1] for c in _packed_cases(n)} == ops - {"rsa"}, n
        assert any(c[3] == "doc_zigzag" for c in _packed_cases(n)) or n == 1
        assert {c[0] for c in _triton_cases(n)} == ops - {"rsa"}, n


def _check_ledger(layout, causal):
    """Measured bytes per op and pass against the closed forms."""
    info = comm.group_info()
    n, r = info.size, info.rank
    b, c, h, hkv, d = 2, 4, 4, 2, 8
    L = c * n
    q, k, v, do = (ok.shard_sequence(t, layout=layout).float() for t in _inputs(3, b, L, h, hkv, d, None))
    got, want = {}, {}

    def measure(name, fn, kind_f, kind_b):
        ql, kl, vl = (t.clone().requires_grad_(True) for t in (q, k, v))
        with ok.comm_ledger() as fwd:
            out = fn(ql, kl, vl, causal=causal, layout=layout)
        with ok.comm_ledger() as bwd:
            out.backward(do)
        got[name] = (fwd.received(kind_f), bwd.received(kind_b), fwd.payload_received() - fwd.received(kind_f),
                     bwd.payload_received() - bwd.received(kind_b))

    measure("ring", ring_attention, "p2p", "p2p")
    want["ring"] = ring_comm_bytes(n, b, c, hkv, d, 4)
    measure("token_ring", token_ring_attention, "p2p", "p2p")
    want["token_ring"] = token_ring_comm_bytes(n, r, b, c, h, d, 4, layout, causal)
    measure("allgather_kv", allgather_kv_attention, "all_gather", "reduce_scatter")
    want["allgather_kv"] = allgather_kv_comm_bytes(n, b, c, hkv, d, 4)
    ql, kl, vl = (t.clone().requires_grad_(True) for t in (q, k, v))
    with ok.comm_ledger() as fwd:
        out = ring_self_attention(ql, kl, vl, causal=causal, layout=layout)
    with ok.comm_ledger() as bwd:
        out.backward(do)
    rsa = rsa_comm_bytes(n, b, c, hkv, d, 4)
    got["rsa"] = (fwd.received("p2p"), bwd.received("p2p"), bwd.received("reduce_scatter"), fwd.payload_received())
    want["rsa"] = {"forward": rsa["forward"], "backward": rsa["backward"]}
    rsa_want = (rsa["forward"], rsa["backward"], rsa["backward_reduce_scatter"], rsa["forward"])
    if h % n == 0 and (hkv % n == 0 or n % hkv == 0):
        measure("ulysses", ulysses_attention, "all_to_all", "all_to_all")
        want["ulysses"] = ulysses_comm_bytes(n, b, c, h, hkv, d, 4)
    res = {k: (got[k], (want[k]["forward"], want[k]["backward"], 0, 0)) for k in got}
    res["rsa"] = (got["rsa"], rsa_want)
    return res


@pytest.mark.parametrize("n", WORLD_SIZES)
@pytest.mark.parametrize("layout, causal", [("zigzag", True), ("contiguous", True), ("zigzag", False)])
def test_ledger_equals_closed_form(n, layout, causal):
    for rank, res in enumerate(run_world(_check_ledger, n, layout, causal)):
        for op, (got, want) in res.items():
            assert got == want, f"{op} rank {rank}: measured (fwd, bwd, other fwd, other bwd) {got} != {want}"


def test_ring_forward_volume_is_the_reference_formula():
    # REFERENCE.md: 2 (N-1)/N * B*L*d_kv*b received per rank in forward; twice that in backward (fp32)
    n, b, c, hkv, d = 4, 2, 8, 2, 16
    L = n * c
    assert ring_comm_bytes(n, b, c, hkv, d, 2)["forward"] == 2 * (n - 1) * b * L * hkv * d * 2 // n
    assert ring_comm_bytes(n, b, c, hkv, d, 4)["backward"] == 2 * ring_comm_bytes(n, b, c, hkv, d, 4)["forward"]


def test_token_ring_causal_zigzag_sends_three_quarters_of_a_rotation():
    n, c = 4, 8
    rows = [token_ring_comm_bytes(n, r, 1, c, 1, 1, 1, "zigzag", True)["forward"] for r in range(n)]
    # bytes = rows_in * D*b + rows_out * (D*4 + 4) (fp32 partial out and lse) with D = b = 1, so
    # rows_in + 8 rows_out; summed over ranks rows_in == rows_out == 3/4 of N (N-1) C
    assert sum(rows) == 9 * 3 * n * (n - 1) * c // 4


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_zigzag_balances_causal_work_at_every_step(n):
    L = 12 * n
    spans = layout_spans("zigzag", n, L)
    causal = Mask(causal=True)
    for t in range(n):
        work = [sum(b.work(causal) for b in plan_blocks(spans[r], spans[(r - t) % n], causal)) for r in range(n)]
        assert len(set(work)) == 1, f"step {t}: work per rank {work}"
    contiguous = layout_spans("contiguous", n, L)
    total = [sum(sum(b.work(causal) for b in plan_blocks(contiguous[r], contiguous[s], causal)) for s in range(n))
             for r in range(n)]
    assert total[-1] > total[0]  # the imbalance zigzag removes


CU = (0, 5, 6, 30, 36)  # documents of 5, 1, 24 and 6 tokens


@pytest.mark.parametrize("window", [(-1, -1), (2, -1), (4, 1), (0, 0), (7, 3)], ids=str)
@pytest.mark.parametrize("docs", [False, True], ids=["stream", "packed"])
def test_blocks_cover_exactly_the_visible_pairs(window, docs):
    from odysseus_kernels.kernels.attention import block_mask

    for n, causal in itertools.product((1, 2, 3), (False, True)):
        for layout in ("contiguous", "zigzag"):
            L = 36
            if L % (n * (2 if layout == "zigzag" else 1)):
                continue
            mask = Mask(causal=causal, window=window, cu_seqlens=CU if docs else None)
            spans = layout_spans(layout, n, L)
            for r, s in itertools.product(range(n), range(n)):
                seen = torch.zeros(L // n, L // n, dtype=torch.int64)
                for b in plan_blocks(spans[r], spans[s], mask):
                    blk = seen[b.q, b.k]
                    m = block_mask(b.q_stop - b.q_start, b.k_stop - b.k_start, q_offset=b.q_offset,
                                   k_offset=b.k_offset, **{k: v for k, v in mask.kernel_args(0, 0).items()
                                                           if k in ("causal", "window", "cu_seqlens")}) \
                        if b.masked else None
                    blk += 1 if m is None else m.long()
                    assert b.work(mask) == (blk.numel() if m is None else int(m.sum()))
                qpos = ok.local_positions(L // n, rank=r, world_size=n, layout=layout).view(-1, 1)
                kpos = ok.local_positions(L // n, rank=s, world_size=n, layout=layout).view(1, -1)
                want = torch.ones_like(seen, dtype=torch.bool)
                if causal:
                    want &= kpos <= qpos
                if window[0] >= 0:
                    want &= kpos >= qpos - window[0]
                if window[1] >= 0:
                    want &= kpos <= qpos + window[1]
                if docs:
                    cu = torch.tensor(CU)
                    want &= torch.searchsorted(cu, qpos, right=True) == torch.searchsorted(cu, kpos, right=True)
                assert torch.equal(seen, want.long()), (n, causal, layout, r, s)


def _max_error(fn, sh, inputs, mask, **kw):
    """Max abs error of out, dq, dk, dv of ``fn`` on the shards ``sh(t)`` of the float64 ``(q, k, v, dO)``
    (called with the mask ``mask`` and ``kw``) against float64 attention of the whole sequence."""
    q, k, v, do = inputs
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    ref = attention_ref(qr, kr, vr, **mask)
    ref.backward(do)
    ql, kl, vl = (sh(t).requires_grad_(True) for t in (q, k, v))
    out = fn(ql, kl, vl, causal=mask["causal"], **kw)
    out.backward(sh(do))
    return max((got - sh(want)).abs().max().item() for got, want in
               ((out, ref.detach()), (ql.grad, qr.grad), (kl.grad, kr.grad), (vl.grad, vr.grad)))


MASK_SHAPE = (1, 4, 2, 8)  # b, h, hkv, d of the window and packed-document cases


def _takes_masks(name, n):
    """The ops that take windows and documents on a world of n (not RSA; Ulysses where heads divide)."""
    _, h, hkv, _ = MASK_SHAPE
    return not (name == "rsa" or (name == "ulysses" and (h % n or (hkv % n and n % hkv))))


def _window_cases(n):
    """Sliding windows (left only, both sides, smaller / larger than a shard) for every op."""
    cases = []
    for name, causal, window in itertools.product(_op_names(n), (True, False), [(3, -1), (2, 1), (9, 0), (1, 5)]):
        if not _takes_masks(name, n) or (not causal and window[1] < 0):
            continue
        cases += [(name, layout, window, causal) for layout in LAYOUTS]
    return cases


def _check_windows(seed, name, layout, window, causal):
    """One case of :func:`_window_cases`: the max abs error of out, dq, dk, dv (float64)."""
    n = comm.group_info().size
    b, h, hkv, d = MASK_SHAPE
    q, k, v, do = _inputs(seed, b, 4 * n, h, hkv, d, None)
    return _max_error(_op(name), lambda t: ok.shard_sequence(t, layout=layout), (q, k, v, do),
                      dict(causal=causal, window=window), layout=layout, window_size=window)


@pytest.mark.parametrize("n, case", _params(
    _window_cases, lambda name, layout, window, causal: f"{name}-{layout}-{window}-{'causal' if causal else 'full'}"))
def test_sliding_windows_match_float64_attention(n, case):
    per_rank = run_world(_check_windows, n, 11 + n, *case, timeout=600)
    assert all(err <= 1e-12 for err in per_rank), per_rank


def _check_window_ledger():
    """A window that fits in k ranks (contiguous layout): the ring stops after k hops."""
    n = comm.group_info().size
    b, c, h, hkv, d = 1, 4, 2, 2, 8
    q, k, v, do = (ok.shard_sequence(t, layout="contiguous") for t in _inputs(5, b, c * n, h, hkv, d, None))
    out = {}
    for window in [(3, -1), (4, -1), (5, -1), (-1, -1)]:
        ql, kl, vl = (t.clone().requires_grad_(True) for t in (q, k, v))
        with ok.comm_ledger() as fwd:
            o = ring_attention(ql, kl, vl, causal=True, layout="contiguous", window_size=window)
        with ok.comm_ledger() as bwd:
            o.backward(do)
        out[window] = (fwd.received("p2p"), bwd.received("p2p"))
    return out


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (2, 3, 4)])
def test_window_that_fits_in_fewer_ranks_moves_less(n):
    b, c, hkv, d = 1, 4, 2, 8
    for got in run_world(_check_window_ledger, n):
        for window, (f, bw) in got.items():
            steps = ring_steps(layout_spans("contiguous", n, c * n), Mask(causal=True, window=window))
            # left window 3 < c: only the previous rank's K/V are needed; 5 > c: two ranks back
            assert steps == min(n, {3: 2, 4: 2, 5: 3, -1: n}[window[0]])
            want = ring_comm_bytes(n, b, c, hkv, d, 8, steps=steps)
            assert (f, bw) == (want["forward"], want["backward"]), (window, f, bw, want)
        assert got[(3, -1)][0] < got[(-1, -1)][0] or n == 2


def _check_bad_inputs():
    info = comm.group_info()
    n, r = info.size, info.rank
    errors = {}
    q = torch.randn(1, 4, 4, 8)
    kv = torch.randn(1, 4, 2, 8)

    def attempt(key, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except (ValueError, TypeError) as e:
            errors[key] = f"{type(e).__name__}: {e}"

    short_k = kv[:, :2] if r == n - 1 else kv  # k shorter than q on one rank only
    attempt("short_k", ring_attention, q, short_k, short_k)
    attempt("heads", ring_attention, torch.randn(1, 4, 3, 8), kv, kv)
    attempt("ulysses_heads", ulysses_attention, torch.randn(1, 4, 6, 8), torch.randn(1, 4, 6, 8),
            torch.randn(1, 4, 6, 8))
    attempt("dtype", token_ring_attention, q, kv.double(), kv)
    attempt("not_tensor", allgather_kv_attention, q.tolist() if r == 0 else q, kv, kv)
    attempt("odd_zigzag", ring_attention, q[:, :3], kv[:, :3], kv[:, :3], layout="zigzag")
    attempt("window", ulysses_attention, q, kv, kv, window_size=(2, -3))
    attempt("rsa_heads", ring_self_attention, torch.randn(1, 4, 3, 8), kv, kv)
    attempt("rsa_dtype", ring_self_attention, q, kv.double(), kv)
    attempt("rsa_short_k", ring_self_attention, q, short_k, short_k)
    attempt("rsa_layout", ring_self_attention, q, kv, kv, layout="striped")
    return errors


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_bad_inputs_raise_on_every_rank(n):
    for rank, e in enumerate(run_world(_check_bad_inputs, n, timeout=60)):
        assert "q heads (3) must be divisible by k/v heads (2)" in e["heads"]
        assert e["dtype"].startswith("TypeError: token_ring_attention: q, k, v must share a dtype")
        assert e["not_tensor"].startswith("TypeError: allgather_kv_attention: q must be a torch.Tensor")
        assert "seq_local must be even, got 3" in e["odd_zigzag"]
        assert "window_size must be (left, right) with ints >= -1 (-1 = unbounded), got (2, -3)" in e["window"]
        assert e["rsa_heads"].startswith("ValueError: ring_self_attention:") and "divisible" in e["rsa_heads"]
        assert e["rsa_dtype"].startswith("TypeError: ring_self_attention:") and "dtype" in e["rsa_dtype"]
        assert e["rsa_layout"].startswith("ValueError: ring_self_attention:") and "striped" in e["rsa_layout"]
        if n > 1:
            assert "ring_attention:" in e["short_k"] and ("same on every rank" in e["short_k"]
                                                          or "same local sequence length" in e["short_k"])
            assert "ring_self_attention:" in e["rsa_short_k"], e["rsa_short_k"]
        if 6 % n:
            assert f"q heads (6) must be divisible by the Ulysses group size ({n})" in e["ulysses_heads"]
        else:
            assert "ulysses_heads" not in e


def _check_usp_bad_input_in_one_ulysses_group():
    g = world_cached(("usp_groups", 2), lambda: usp_groups(2))
    r = comm.group_info().rank
    q = torch.randn(1, 4, 4, 8)
    kv = torch.randn(1, 2 if r == 0 else 4, 2, 8)  # only rank 0 (Ulysses group 0) is wrong
    try:
        usp_attention(q, kv, kv, ulysses_group=g.ulysses_group, ring_group=g.ring_group)
    except ValueError as e:
        return str(e)
    return None


def test_usp_bad_input_raises_on_every_rank_of_both_groups():
    msgs = run_world(_check_usp_bad_input_in_one_ulysses_group, 4, timeout=60)
    assert all(m is not None and m.startswith("usp_attention: q and k must hold the same local sequence length, "
                                              "got 4 and 2") for m in msgs), msgs


PACKED = [
    # (cu_seqlens for L = 24 * n: a short document (shorter than a shard), long ones, uneven), per-doc ok?
    lambda n: [0, 4 * n, 6 * n, 18 * n, 24 * n],
    lambda n: [0, 2, 24 * n - 2, 24 * n] if n > 1 else [0, 2, 10, 24],
]


def _packed_cases(n):
    """Packed documents through every op, both sharding styles (the per-document layouts where every
    document divides), causal and not."""
    cases = []
    for ci, make_cu in enumerate(PACKED):
        cu = make_cu(n)
        lens = [y - x for x, y in zip(cu, cu[1:])]
        for name, causal in itertools.product(_op_names(n), (True, False)):
            if not _takes_masks(name, n):
                continue
            layouts = list(LAYOUTS) + [lay for lay, p in (("doc_contiguous", 1), ("doc_zigzag", 2))
                                       if all(m % (p * n) == 0 for m in lens)]
            cases += [(ci, name, causal, layout) for layout in layouts]
    return cases


def _check_packed(seed, ci, name, causal, layout):
    """One case of :func:`_packed_cases`: the max abs error of out, dq, dk, dv (float64)."""
    n = comm.group_info().size
    b, h, hkv, d = MASK_SHAPE
    q, k, v, do = _inputs(seed, b, 24 * n, h, hkv, d, None)
    cu = PACKED[ci](n)
    return _max_error(_op(name), lambda t: ok.shard_packed(t, cu, layout=layout)[0], (q, k, v, do),
                      dict(causal=causal, cu_seqlens=cu), layout=layout, cu_seqlens=torch.tensor(cu, dtype=torch.int32))


@pytest.mark.parametrize("n, case", _params(
    _packed_cases, lambda ci, name, causal, layout: f"{name}-{layout}-docs{ci}-{'causal' if causal else 'full'}"))
def test_packed_documents_match_float64_attention(n, case):
    per_rank = run_world(_check_packed, n, 21 + n, *case, timeout=600)
    assert all(err <= 1e-12 for err in per_rank), per_rank


def _check_packed_skips_and_errors():
    info = comm.group_info()
    n, r = info.size, info.rank
    out = {}
    # documents that never cross a rank boundary (contiguous split): no rank sees another's keys,
    # so the ring moves nothing beyond its own step
    cu = [c * 8 for c in range(n + 1)]
    x = torch.randn(1, 8 * n, 2, 4)
    xl = ok.shard_sequence(x)
    with ok.comm_ledger() as led:
        ring_attention(xl, xl, xl, causal=True, layout="contiguous", cu_seqlens=cu)
    out["p2p"] = led.received("p2p")

    def attempt(key, **kw):
        try:
            ring_attention(xl, xl, xl, causal=True, layout="contiguous", **kw)
        except (ValueError, TypeError) as e:
            out[key] = str(e)

    attempt("unsorted", cu_seqlens=[0, 6, 3, 8 * n])
    attempt("end", cu_seqlens=[0, 4, 8 * n - 1])
    attempt("differs", cu_seqlens=[0, 4 + (r == 0), 8 * n])
    try:
        ring_attention(xl, xl, xl, causal=True, layout="doc_zigzag", cu_seqlens=[0, 3, 8 * n])
    except ValueError as e:
        out["doc_len"] = str(e)
    return out


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (2, 3, 4)])
def test_packed_streams_skip_cross_document_blocks_and_reject_bad_cu_seqlens(n):
    for res in run_world(_check_packed_skips_and_errors, n, timeout=60):
        assert res["p2p"] == 0
        assert "cu_seqlens must be strictly increasing" in res["unsorted"]
        assert f"cu_seqlens must end at the stream length {8 * n}, got {8 * n - 1}" in res["end"]
        assert "cu_seqlens must be the same on every rank" in res["differs"]
        assert f"every document length must be divisible by {2 * n}" in res["doc_len"]


def test_shard_packed_position_ids_restart_per_document():
    x = torch.arange(24).view(1, 24)
    local, meta = ok.shard_packed(x, [0, 8, 24], layout="doc_zigzag")  # a world of one
    assert torch.equal(local, x) and meta.position_ids.tolist() == list(range(8)) + list(range(16))


def _triton_cases(n):
    return [(name,) for name in _op_names(n) if not (name == "rsa" or (name == "ulysses" and 4 % n))]


def _check_triton_backend(name):
    """One SP op on the Triton block kernels (the interpreter on CPU), fp32, against float64: the max
    abs error of out, dq, dk, dv."""
    n = comm.group_info().size
    fn = _op(name)
    q, k, v, do = _inputs(9, 1, 8 * n, 4, 2, 16, None)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = attention_ref(*ref_leaves, causal=True)
    ref.backward(do)
    sh = lambda t: ok.shard_sequence(t, layout="zigzag")  # noqa: E731
    ls = [sh(t).float().requires_grad_(True) for t in (q, k, v)]
    out = fn(*ls, causal=True, layout="zigzag", backend="triton")
    out.backward(sh(do).float())
    return max((a.double() - sh(b)).abs().max().item()
               for a, b in zip([out] + [t.grad for t in ls], [ref.detach()] + [t.grad for t in ref_leaves]))


@needs_interpreter
@pytest.mark.parametrize("n, case", [p for p in _params(_triton_cases, lambda name: name) if p.values[0] in (2, 3)])
def test_ops_on_the_triton_block_kernels(n, case):
    per_rank = run_world(_check_triton_backend, n, *case, timeout=600)
    assert all(e < 1e-4 for e in per_rank), per_rank


def _check_defaults_lse_and_empty():
    """Every op with all defaults composes with shard/gather; return_lse gives the full-sequence lse;
    batch 0 and zero-length shards give empty outputs and gradients (forward and backward)."""
    n = comm.group_info().size
    q, k, v, do = _inputs(31, 2, 4 * n, 4, 2, 8, None)
    res = {}
    for causal in (False, True):
        qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
        ref = attention_ref(qr, kr, vr, causal=causal)
        ref.backward(do)
        _, ref_lse = attention_block_fwd(q, k, v, causal=causal)  # [B, H, L] float64
        for name, fn, _ in _ops(n):
            if name == "ulysses" and 4 % n:
                continue
            ql, kl, vl = (ok.shard_sequence(t).requires_grad_(True) for t in (q, k, v))  # all defaults
            out = fn(ql, kl, vl, causal=causal)
            out.backward(ok.shard_sequence(do))
            got = ok.gather_sequence(out.detach())
            err = max([(got - ref.detach()).abs().max().item()]
                      + [(a.grad - ok.shard_sequence(b.grad)).abs().max().item()
                         for a, b in ((ql, qr), (kl, kr), (vl, vr))])
            o2, lse = fn(*(ok.shard_sequence(t) for t in (q, k, v)), causal=causal, return_lse=True)
            want_lse = ok.shard_sequence(ref_lse, dim=2)
            err = max(err, (o2 - out).abs().max().item(), (lse - want_lse).abs().max().item())
            assert lse.shape == (2, 4, 4) and lse.dtype == torch.float64, (name, lse.shape, lse.dtype)
            res[(name, causal)] = err
    for (case, shape), causal, layout in itertools.product((("batch0", (0, 4, 4, 8)), ("seq0", (2, 0, 4, 8))),
                                                         (False, True), LAYOUTS):
        for name, fn, _ in _ops(n):
            if name == "ulysses" and 4 % n:
                continue
            qe = torch.randn(shape, dtype=torch.float32).requires_grad_(True)
            ke, ve = (torch.randn(shape[:2] + (2, 8)).requires_grad_(True) for _ in range(2))
            out, lse = fn(qe, ke, ve, causal=causal, layout=layout, return_lse=True)
            out.sum().backward()
            key = (name, case, causal, layout)
            assert out.shape == shape and lse.shape == (shape[0], 4, shape[1]), key
            assert qe.grad.shape == qe.shape and ke.grad.shape == ke.shape and ve.grad.shape == ve.shape, key
            res[key] = 0.0
    # the group is still in step: a normal call after the empty ones
    ql = ok.shard_sequence(q)
    res["after"] = (ok.gather_sequence(ring_attention(ql, ql[..., :2, :], ql[..., :2, :], causal=True))
                    - attention_ref(q, q[..., :2, :], q[..., :2, :], causal=True)).abs().max().item()
    return res


@pytest.mark.parametrize("n", [pytest.param(n, id=f"N{n}") for n in (2, 3)])
def test_defaults_compose_return_lse_and_empty_tensors(n):
    for res in run_world(_check_defaults_lse_and_empty, n, timeout=600):
        assert res and all(e < 1e-10 for e in res.values()), res
