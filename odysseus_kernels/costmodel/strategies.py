"""Closed-form communication of every strategy, per layer and per rank, as ledger calls.

Notation (REFERENCE.md): L global tokens, N ranks, B batch, C = L/N, b bytes per activation
element, T = B*C local tokens, d hidden, d_q = H*d_h, d_kv = H_kv*d_h, i MLP size.

| strategy | forward (received per rank per layer) | backward |
|---|---|---|
| ``ring``, ``zigzag`` | p2p: (N-1) x 2*T*d_kv*b (K, V) | K, V again + fp32 dK, dV (N-1 hops) |
| ``token_ring`` | p2p: Q one way, (out, lse) back; zigzag: only the needed half of Q | Q, dO, lse, D; dQ back |
| ``ulysses`` | all_to_all of q, k, v, o: (N-1)/N of each local tensor | dO, dq, dk, dv |
| ``usp`` | Ulysses all-to-alls in the Ulysses group + ring in the ring group | both backwards |
| ``allgather_kv`` | all_gather of K, V: (N-1) x T*d_kv*b each | reduce_scatter of dK, dV |
| ``lasp2`` | all_gather of the [B, H, d_h, d_h] fp32 state: (N-1) x B*H*d_h^2*4 | same for dM |
| ``lasp2h`` | ``lasp2`` on linear layers, ``allgather_kv`` on softmax layers | |
| ``lasp1`` | p2p chain: one state from the previous rank | one dM from the next rank |
| ``rsa`` | p2p: K ring, then V ring (N-1 steps each) | K, V again; dK, dV reduce-scattered |
| ``tp_sp`` | all_gather (N-1)*T*d*b + reduce_scatter (N-1)*T*d*b, for attention and MLP | conjugates (+ re-gather) |
| ``odysseus`` | attention as ``tp_sp``; MLP weights all_gathered (ZeRO-3) | MLP weight grads reduce-scattered |

Replicated weights add a ``grad_sync`` phase (one all_reduce per weight tensor after backward).

**One place per formula**: the volumes of this package's ops are their own closed forms
(``ring_comm_bytes``, ``token_ring_comm_bytes``, ``ulysses_comm_bytes``, ``allgather_kv_comm_bytes``,
``rsa_comm_bytes``, ``lasp2_comm_bytes``, ``tp_gemm_comm_bytes``), called here and turned into
ledger :class:`~.collectives.Call` s; the ledger tests of the real ops check both at once. Only the
published baselines (LASP-1, and the systems of :mod:`.published`) have their formulas here.
"""
from __future__ import annotations

from dataclasses import replace

from ..ops.attention.allgather_kv import allgather_kv_comm_bytes
from ..ops.attention.ring import ring_comm_bytes
from ..ops.attention.rsa import rsa_comm_bytes
from ..ops.attention.token_ring import token_ring_comm_bytes
from ..ops.attention.ulysses import ulysses_comm_bytes, ulysses_kv_heads
from ..ops.lasp2 import lasp2_comm_bytes
from ..ops.tp_gemm import tp_gemm_comm_bytes
from .collectives import Call, CommVolume, calls_of, p2p
from ..models.shape import ModelShape
from .config import ModelConfig, World, dtype_bytes
from .impl import OURS, Impl
from .published import Published

STRATEGIES = ("tp_sp", "odysseus", "ulysses", "ring", "zigzag", "token_ring", "usp", "allgather_kv", "lasp2",
              "lasp2h", "rsa", "lasp1")
# the ops of this package (lasp1 exists only as a published baseline for the validation)
PACKAGE_STRATEGIES = STRATEGIES[:-1]
ZIGZAG = ("zigzag", "token_ring", "usp")
SOFTMAX_ONLY = ("token_ring", "usp", "allgather_kv", "rsa")
LINEAR_ONLY = ("lasp2", "lasp1")
WEIGHTS = ("replicated", "zero3", "fsdp_model")

DESCRIPTIONS = {
    "tp_sp": "Megatron sequence parallelism: AllGather-GEMM / GEMM-ReduceScatter, weights split by heads",
    "odysseus": "attention as TP-SP, MLP sequence-parallel with ZeRO-3 weights",
    "ulysses": "all-to-all sequence <-> heads, local attention over the full sequence",
    "ring": "ring attention, contiguous layout (causal work imbalanced)",
    "zigzag": "ring attention, zigzag layout (balanced)",
    "token_ring": "TokenRing: Q one way, partial outputs back, K/V resident (zigzag)",
    "usp": "Ulysses inside groups x ring across them (2D)",
    "allgather_kv": "one AllGather of K and V (Llama-3 / LASP-2H style), contiguous layout",
    "lasp2": "LASP-2: one AllGather of d x d states per layer",
    "lasp2h": "LASP-2 on linear layers + all-gather-KV on softmax layers",
    "rsa": "Ring Self-Attention (2021): K ring then V ring, full score rows (quadratic memory)",
    "lasp1": "LASP-1: sequential P2P chain of states (published baseline)",
}


def _sp_size(world) -> int:
    return world.sp if isinstance(world, World) else int(world)


def usp_degrees(world: int, heads: int, kv_heads: int, ulysses_degree: int | None = None) -> tuple[int, int]:
    """``(ulysses, ring)`` degrees: the given one, else the largest Ulysses degree dividing the world,
    the heads and the kv heads that leaves at least 2 ring ranks (the playground's rule).

    Example::

        >>> usp_degrees(8, 32, 8)
        (4, 2)
    """
    if ulysses_degree is not None:
        if ulysses_degree < 1 or world % ulysses_degree:
            raise ValueError(f"usp: ulysses_degree ({ulysses_degree}) must divide the world size ({world})")
        return ulysses_degree, world // ulysses_degree
    best = 1
    for u in range(1, world + 1):
        if world % u == 0 and heads % u == 0 and kv_heads % u == 0 and (world // u >= 2 or world == 1):
            best = u
    return best, world // best


def check(strategy: str, model: ModelConfig, seq_len: int, world, *, impl: Impl = OURS,
          ulysses_degree: int | None = None, weights: str | None = None, layout: str | None = None) -> None:
    """Raise ``ValueError`` naming the strategy and what to change when it cannot run this configuration
    (unknown name, layer kinds it cannot serve, sequence or heads not divisible by the group).

    Example::

        >>> check("ulysses", ModelConfig(hidden=48, heads=6, kv_heads=6), 64, 4)
        Traceback (most recent call last):
        ...
        ValueError: ulysses: heads (6) must be divisible by the Ulysses degree (4)
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    n = _sp_size(world)
    kinds = set(model.layer_kinds())
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"weights: expected one of {WEIGHTS}, got {weights!r}")
    if strategy in LINEAR_ONLY and kinds != {"linear"}:
        raise ValueError(f"{strategy}: needs a model whose layers are all linear attention (linear_layers='all'); "
                         "use lasp2h for a hybrid")
    if strategy == "lasp2h" and model.linear_layers != "hybrid":
        raise ValueError("lasp2h: needs a hybrid model (linear_layers='hybrid'); use lasp2 for an all-linear model")
    if strategy in SOFTMAX_ONLY and "linear" in kinds:
        raise ValueError(f"{strategy}: softmax attention only; the model has linear-attention layers "
                         "(use lasp2/lasp2h)")
    if layout not in (None, "zigzag", "contiguous"):
        raise ValueError(f"layout: expected 'zigzag' or 'contiguous', got {layout!r}")
    zig = strategy in ZIGZAG and layout != "contiguous"
    k = 2 * n if zig else n
    if seq_len % k:
        raise ValueError(f"{strategy}: sequence length {seq_len} must be divisible by {k} "
                         f"({'2 x ' if zig else ''}{n} ranks)")
    if strategy in ("tp_sp", "odysseus") and (model.heads % n or model.kv_heads % n):
        raise ValueError(f"{strategy}: heads ({model.heads}) and kv_heads ({model.kv_heads}) must be divisible by "
                         f"the group size ({n})")
    if strategy in ("tp_sp", "odysseus") and model.intermediate % n:
        raise ValueError(f"{strategy}: intermediate ({model.intermediate}) must be divisible by the group size ({n})")
    if strategy == "odysseus" and model.hidden % n:
        raise ValueError(f"odysseus: hidden ({model.hidden}) must be divisible by the group size ({n}) for ZeRO-3")
    if strategy == "ulysses":
        _kv_heads_eff(model, n, impl, "ulysses")
    if strategy == "usp":
        u, _ = usp_degrees(n, model.heads, model.kv_heads, ulysses_degree)
        _kv_heads_eff(model, u, impl, "usp")


def _kv_heads_eff(model: ModelConfig, n: int, impl: Impl, name: str) -> int:
    """kv heads after Ulysses' all-to-all preparation: the op's own rule (:func:`ulysses_kv_heads`)."""
    return ulysses_kv_heads(name, model.heads, model.kv_heads, n, "the Ulysses degree", q_name="heads")


def ring_transfers(n: int, batch: int, seq_local: int, kv_heads: int, head_dim: int, b: int,
                   impl: Impl = OURS) -> dict:
    """Per ring step on ``n`` ranks: ``kv`` bytes of K and V received (``kv_hops`` steps) and ``dkv``
    bytes of the travelling dK/dV accumulators (``dkv_hops`` hops), from ``ring_comm_bytes`` (or
    the published system's, :meth:`~.published.Published.ring_transfers`)."""
    if n <= 1:
        return {"kv": 0, "kv_hops": 0, "dkv": 0, "dkv_hops": 0}
    v = ring_comm_bytes(n, batch, seq_local, kv_heads, head_dim, b)
    hops = n - 1
    ours = {"kv": v["forward"] // hops, "kv_hops": hops, "dkv": (v["backward"] - v["forward"]) // hops,
            "dkv_hops": hops}
    if isinstance(impl, Published):
        return impl.ring_transfers(ours, n, batch * seq_local * kv_heads * head_dim)
    return ours


def token_ring_wire(model: ModelConfig, b: int, impl: Impl = OURS) -> dict:
    """TokenRing's bytes per query row (one sequence, all heads) by phase: ``query`` travels to the
    K/V owner, ``result`` comes back (for the time and memory models).

    Read off ``token_ring_comm_bytes`` itself: on 2 ranks with a causal contiguous layout, rank 0
    receives one query row and no result, rank 1 one result row and no query. A published system
    may differ (:meth:`~.published.Published.token_ring_wire`).
    """
    q = token_ring_comm_bytes(2, 0, 1, 1, model.heads, model.head_dim, b, "contiguous", True)
    r = token_ring_comm_bytes(2, 1, 1, 1, model.heads, model.head_dim, b, "contiguous", True)
    ours = {ph: {"query": q[ph], "result": r[ph]} for ph in ("forward", "backward")}
    if isinstance(impl, Published):
        return impl.token_ring_wire(model.heads, model.head_dim, b, ours)
    return ours


def _ring_calls(n, batch, seq_local, kv_heads, head_dim, b, impl, scope) -> list[Call]:
    """Ring attention's calls: K/V every step; in backward K/V again and the dK/dV accumulators."""
    t = ring_transfers(n, batch, seq_local, kv_heads, head_dim, b, impl)
    calls = [p2p("forward", n, send_fwd=t["kv"], count=t["kv_hops"], scope=scope)]
    if t["dkv_hops"] == t["kv_hops"]:  # ours: the accumulator travels with the next K/V (one exchange per step)
        return calls + [p2p("backward", n, send_fwd=t["kv"] + t["dkv"], count=t["kv_hops"], scope=scope)]
    return calls + [p2p("backward", n, send_fwd=t["kv"], count=t["kv_hops"], scope=scope),
                    p2p("backward", n, send_fwd=t["dkv"], count=t["dkv_hops"], scope=scope)]


def _token_ring_calls(model, n, batch, C, b, impl, rank, causal, layout) -> list[Call]:
    """TokenRing's calls of ``rank``: ``token_ring_comm_bytes`` gives what it receives. What it sends
    is what its mirror rank ``N-1-r`` receives: in the causal zigzag and contiguous layouts (and
    without a mask) the rows rank r sends out are the rows rank N-1-r receives, and vice versa."""
    r = 0 if rank is None else rank
    lay = layout or "zigzag"
    if isinstance(impl, Published) and impl.changes_token_ring:  # their wire format on our schedule's rows
        from ..ops.attention.token_ring import token_ring_rows

        w = token_ring_wire(model, b, impl)
        rows_in, rows_back = token_ring_rows(n, r, C, lay, causal)
        return [p2p(ph, n, send_fwd=batch * (rows_back * w[ph]["query"] + rows_in * w[ph]["result"]),
                    recv_fwd=batch * (rows_in * w[ph]["query"] + rows_back * w[ph]["result"]))
                for ph in ("forward", "backward")]
    args = (batch, C, model.heads, model.head_dim, b, lay, causal)
    recv, sent = token_ring_comm_bytes(n, r, *args), token_ring_comm_bytes(n, n - 1 - r, *args)
    return [calls_of("p2p", ph, n, sent[ph], recv[ph], count=n - 1) for ph in ("forward", "backward")]


def _attention_calls(strategy, model, kind, seq_len, batch, n, b, impl, rank, causal, ulysses_degree,
                     layout=None) -> list[Call]:
    """Communication of the attention core of one layer (not the projections), from the ops' closed forms."""
    C = seq_len // n
    h, hkv, dh = model.heads, model.kv_heads, model.head_dim
    if strategy == "lasp2h":
        strategy = "lasp2" if kind == "linear" else "allgather_kv"
    if strategy in ("ring", "zigzag"):
        return _ring_calls(n, batch, C, hkv, dh, b, impl, "sp")
    if strategy == "rsa":  # K ring then V ring, each N-1 steps; backward: both again + dK/dV reduce-scattered
        v = rsa_comm_bytes(n, batch, C, hkv, dh, b)
        return [calls_of("p2p", "forward", n, v["forward"], count=2 * (n - 1)),
                calls_of("p2p", "backward", n, v["backward"], count=2 * (n - 1)),
                calls_of("reduce_scatter", "backward", n, v["backward_reduce_scatter"], count=2)]
    if strategy == "token_ring":
        return _token_ring_calls(model, n, batch, C, b, impl, rank, causal, layout)
    if strategy in ("ulysses", "usp"):
        u, rr = (n, 1) if strategy == "ulysses" else usp_degrees(n, h, hkv, ulysses_degree)
        hk = _kv_heads_eff(model, u, impl, strategy)
        scope = "sp" if strategy == "ulysses" else "ulysses"
        v = ulysses_comm_bytes(u, batch, C, h, hkv, dh, b)  # q, k, v in; o out (and the conjugates)
        calls = [calls_of("all_to_all", ph, u, v[ph], count=4, scope=scope) for ph in ("forward", "backward")]
        if strategy == "usp" and rr > 1:  # after the all-to-all: u*C tokens of hk/u heads per rank
            calls += _ring_calls(rr, batch, u * C, hk // u, dh, b, impl, "ring")
        return calls
    if strategy == "allgather_kv":
        v = allgather_kv_comm_bytes(n, batch, C, hkv, dh, b)
        return [calls_of("all_gather", "forward", n, v["forward"], count=2),
                calls_of("reduce_scatter", "backward", n, v["backward"], count=2)]
    if strategy == "lasp2":
        v = lasp2_comm_bytes(n, batch, h, dh, dh, b)
        return [calls_of("all_gather", ph, n, v[ph]) for ph in ("forward", "backward")]
    if strategy == "lasp1":  # published baseline (LASP-1): one fp32 state from the previous rank
        st = lasp1_state_bytes(model, batch)
        r = 0 if rank is None else rank
        first, last = r == 0, r == n - 1
        return [p2p("forward", n, send_fwd=0 if last else st, recv_fwd=0 if first else st),
                p2p("backward", n, send_bwd=0 if first else st, recv_bwd=0 if last else st)]
    if strategy in ("tp_sp", "odysseus"):
        return []  # the attention core is local once the projections are TP-split
    raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")


def lasp1_state_bytes(model: ModelConfig, batch: int) -> int:
    """LASP-1's travelling state (published baseline): ``[B, H, d_h, d_h]`` fp32."""
    return batch * model.heads * model.head_dim ** 2 * 4


def lasp2_state_bytes(model: ModelConfig, batch: int, b: int) -> int:
    """Bytes of one LASP-2 state ``[B, H, d_h, d_h]``: ``lasp2_comm_bytes`` on 2 ranks (one state)."""
    return lasp2_comm_bytes(2, batch, model.heads, model.head_dim, model.head_dim, b)["forward"]


def tp_gemm_calls(n: int, tokens: int, hidden: int, b: int, impl: Impl = OURS) -> dict[str, Call | None]:
    """One AllGather-GEMM (input ``[tokens, hidden]`` per rank) and one GEMM-ReduceScatter (output
    ``[tokens, hidden]`` per rank), forward and backward, from ``tp_gemm_comm_bytes``: ``ag`` / ``rs``
    forward, ``ag_bwd`` (dX of AG-GEMM: a GEMM-RS), ``rs_bwd`` (dX of GEMM-RS: an AG-GEMM) and
    ``regather`` (``save_gathered=False``: x gathered again; ``None`` otherwise). Ledger kinds follow
    ``impl.tp_impl``."""
    v = tp_gemm_comm_bytes(n, tokens, hidden, hidden, b, save_gathered=impl.tp_save_gathered)
    ag_kind = "p2p" if impl.tp_impl in ("ring", "fused") else "all_gather"
    rs_kind = "p2p" if impl.tp_impl == "ring" else "reduce_scatter"
    once = v["all_gather_linear"]  # dX of AG-GEMM is reduce-scattered: the size of its gathered input
    steps = max(n - 1, 1)
    calls = {"ag": calls_of(ag_kind, "forward", n, v["all_gather_linear"], count=steps if ag_kind == "p2p" else 1),
             "rs": calls_of(rs_kind, "forward", n, v["linear_reduce_scatter"], count=steps if rs_kind == "p2p" else 1),
             "ag_bwd": calls_of(rs_kind, "backward", n, once, count=steps if rs_kind == "p2p" else 1),
             "rs_bwd": calls_of(ag_kind, "backward", n, v["linear_reduce_scatter_backward"],
                                count=steps if ag_kind == "p2p" else 1),
             "regather": None}
    extra = v["all_gather_linear_backward"] - once
    if extra:
        kind = "p2p" if impl.tp_impl == "ring" else "all_gather"
        calls["regather"] = calls_of(kind, "backward", n, extra, count=steps if kind == "p2p" else 1)
    return calls


def _tp_gemm_calls(n, tokens, hidden, b, impl: Impl) -> list[Call]:
    return [c for c in tp_gemm_calls(n, tokens, hidden, b, impl).values() if c is not None]


def _weight_calls(strategy, model, kind, seq_len, batch, n, b, pb, impl, weights, odysseus_mlp) -> list[Call]:
    """Projections / MLP communication (TP-SP, ZeRO-3) and gradient sync of replicated weights."""
    T = batch * seq_len // n
    params = model.layer_params(kind)
    calls: list[Call] = []
    if strategy in ("tp_sp", "odysseus"):
        calls += _tp_gemm_calls(n, T, model.hidden, b, impl)  # attention: qkv(+gate) AG-GEMM, o GEMM-RS
        split = {"q_proj", "k_proj", "v_proj", "o_proj", "o_gate_proj"}
        if strategy == "tp_sp":
            calls += _tp_gemm_calls(n, T, model.hidden, b, impl)
            split |= {"gate_proj", "up_proj", "down_proj"}
        elif odysseus_mlp == "zero3":
            mlp = ("gate_proj", "up_proj", "down_proj")
            for name in mlp:
                full = params[name] * pb
                calls.append(Call("all_gather", "forward", n, nbytes=full // n))
                calls.append(Call("reduce_scatter", "backward", n, nbytes=full))
            split |= set(mlp)
        for name, numel in params.items():
            if name not in split:
                calls.append(Call("all_reduce", "grad_sync", n, nbytes=numel * pb))
        return calls
    w = weights or "replicated"
    for numel in params.values():
        if w == "replicated":
            calls.append(Call("all_reduce", "grad_sync", n, nbytes=numel * pb))
        else:  # ZeRO-3 / FSDP: gathered for use, gradients reduce-scattered
            full = numel * pb
            calls.append(Call("all_gather", "forward", n, nbytes=full // n))
            if w == "fsdp_model":  # ZeRO-3 keeps the gathered weight for backward; FSDP gathers it again
                calls.append(Call("all_gather", "backward", n, nbytes=full // n))
            calls.append(Call("reduce_scatter", "backward", n, nbytes=full))
    return calls


def layer_calls(strategy: str, model: ModelConfig, kind: str, seq_len: int, batch: int, n: int, act_bytes: int, *,
                param_bytes: int | None = None, impl: Impl = OURS, rank: int | None = None, causal: bool = True,
                ulysses_degree: int | None = None, weights: str | None = None, odysseus_mlp: str = "zero3",
                layout: str | None = None, include_weights: bool = True) -> list[Call]:
    """All calls of one layer of ``kind`` (``"softmax"``/``"linear"``) for one rank (``rank=None``:
    rank 0's schedule; only TokenRing and LASP-1 differ between ranks). ``include_weights=False``
    keeps the attention op alone (no projections, ZeRO-3 or gradient sync). Arguments as in
    :func:`comm_volume` (``n`` ranks, ``act_bytes`` per element); returns a list of :class:`Call`."""
    if n <= 1:
        return []
    pb = act_bytes if param_bytes is None else param_bytes
    calls = _attention_calls(strategy, model, kind, seq_len, batch, n, act_bytes, impl, rank, causal, ulysses_degree,
                             layout)
    if include_weights:
        calls += _weight_calls(strategy, model, kind, seq_len, batch, n, act_bytes, pb, impl, weights, odysseus_mlp)
    return calls


def comm_volume(strategy: str, model_cfg, seq_len: int, batch: int, world, dtype, *, layer=None,
                rank: int | None = None, impl: Impl | None = None, causal: bool = True,
                ulysses_degree: int | None = None, weights: str | None = None, odysseus_mlp: str = "zero3",
                param_dtype=None, layout: str | None = None, include_weights: bool = True) -> CommVolume:
    """Bytes one rank sends and receives for one layer (or all layers), per phase and ledger kind.

    Args:
        strategy: one of :data:`STRATEGIES` (the playground's names, plus ``rsa`` and ``lasp1``).
        model_cfg: a :class:`ModelConfig`, a preset name, or a ``LlamaConfig``.
        seq_len: global sequence length L; batch: B.
        world: SP group size N (int) or a :class:`World` (its ``sp``).
        dtype: activation dtype (``"bf16"``, ``"float32"``, a ``torch.dtype``...); ``param_dtype``
            defaults to it (the gradient sync moves parameter-sized tensors).
        layer: ``None`` -> one layer (the model's layers must all be alike), an index -> that layer,
            ``"all"`` -> the sum over all layers (what a ledger around the whole model measures).
        rank: whose bytes (``None``: the busiest rank by bytes received). Only TokenRing (zigzag
            halves) and LASP-1 (chain ends) are rank-dependent.
        impl: the ops' arguments (default :data:`~.impl.OURS`), or a published system
            (:data:`~.published.PUBLISHED`) for the baselines of the validation.
        ulysses_degree: USP's Ulysses degree (default: :func:`usp_degrees`).
        weights: ``"replicated"`` (default), ``"zero3"`` or ``"fsdp_model"`` for the strategies whose
            layers otherwise keep full weights.
        odysseus_mlp: ``"zero3"`` (default) or ``"replicated"``.
        layout: TokenRing's sequence layout (``"zigzag"`` default, or ``"contiguous"``); the other
            strategies move the same bytes in either layout.
        include_weights: ``False`` -> the attention op alone (what a ledger around
            ``ok.ring_attention(...)`` measures): no projections, ZeRO-3 or gradient sync.

    Returns:
        :class:`CommVolume` with phases ``forward``, ``backward`` and ``grad_sync``.

    Example::

        >>> from odysseus_kernels.costmodel import comm_volume, ModelConfig
        >>> m = ModelConfig(layers=1, hidden=64, heads=4, kv_heads=2)
        >>> v = comm_volume("ring", m, 64, 1, 4, "float32")
        >>> v.received("p2p", "forward") == 2 * 3 / 4 * 1 * 64 * 32 * 4   # 2 (N-1)/N B L d_kv b
        True
    """
    model = _as_model(model_cfg)
    impl = OURS if impl is None else impl
    n = _sp_size(world)
    b = dtype_bytes(dtype)
    pb = b if param_dtype is None else dtype_bytes(param_dtype)
    check(strategy, model, seq_len, n, impl=impl, ulysses_degree=ulysses_degree, weights=weights, layout=layout)
    kinds = model.layer_kinds()
    if layer is None:
        if len(set(kinds)) > 1:
            raise ValueError(f"comm_volume: the model mixes {sorted(set(kinds))} layers; pass layer=<index> or "
                             "layer='all'")
        idx = [0]
    elif layer == "all":
        idx = list(range(model.layers))
    elif isinstance(layer, int) and 0 <= layer < model.layers:
        idx = [layer]
    else:
        raise ValueError(f"comm_volume: layer must be None, 'all' or an index in [0, {model.layers}), got {layer!r}")
    # per-rank volumes are linear in the rank (TokenRing) or differ only at the chain ends (LASP-1):
    # the busiest rank is among the first two and the last
    ranks = [rank] if rank is not None else (sorted({0, min(1, n - 1), n - 1}) if strategy in ("token_ring", "lasp1")
                                             else [None])
    per_kind: dict[str, int] = {}
    for i in idx:
        per_kind[kinds[i]] = per_kind.get(kinds[i], 0) + 1
    best = None
    for r in ranks:
        calls = []
        for kind, times in per_kind.items():  # identical layers: one call list, counts multiplied
            calls += [replace(c, count=c.count * times) for c in
                      layer_calls(strategy, model, kind, seq_len, batch, n, b, param_bytes=pb, impl=impl, rank=r,
                                  causal=causal, ulysses_degree=ulysses_degree, weights=weights,
                                  odysseus_mlp=odysseus_mlp, layout=layout, include_weights=include_weights)]
        v = CommVolume(calls)
        if best is None or v.received() > best.received():
            best = v
    return best


def _as_model(m) -> ModelConfig:
    if isinstance(m, ModelConfig):
        return m
    if isinstance(m, str):
        return ModelConfig.preset(m)
    if isinstance(m, ModelShape):
        return ModelConfig.from_llama_config(m)
    raise TypeError(f"model_cfg: expected a ModelConfig, a preset name or a LlamaConfig, got {type(m).__name__}")


def playground_comm_per_layer(strategy: str, rc, world: int, seq_len: int | None = None,
                              impl: Impl | None = None) -> float:
    """The playground's "theory" column: bytes received per rank per layer, forward + backward
    (activation traffic, no gradient sync), busiest rank, averaged over the model's layers.

    ``rc`` is the playground's ``RunConfig`` (``zigzag`` there is ring with the zigzag layout); the
    model is the one it trains under ``strategy`` (``rc.model_config(strategy)``).
    """
    model = ModelConfig.from_llama_config(rc.model_config(strategy))
    L = rc.seq_len if seq_len is None else seq_len
    v = comm_volume(strategy, model, L, rc.batch, world, rc.dtype, layer="all", impl=impl,
                    ulysses_degree=getattr(rc, "ulysses_degree", None))
    return v.received(phase=("forward", "backward")) / model.layers


__all__ = ["STRATEGIES", "PACKAGE_STRATEGIES", "DESCRIPTIONS", "check", "comm_volume", "layer_calls",
           "playground_comm_per_layer", "token_ring_wire", "usp_degrees"]
