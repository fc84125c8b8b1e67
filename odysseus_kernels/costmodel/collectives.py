"""Collective calls: the ledger's byte accounting (exactly as ``comm/ledger.py`` records them) and a
time model for each call on a given group placement.

Accounting, per rank, N ranks in the group, ``s`` local bytes, ``S`` full-buffer bytes
(``comm/collectives.py`` and ``comm/p2p.py``):

- ``all_gather`` of ``s``: sent ``(N-1) s``, received ``(N-1) s``;
- ``reduce_scatter`` of ``S``: sent = received = ``S (N-1) // N``;
- ``all_to_all`` of ``S_in -> S_out``: sent ``S_in (N-1) // N``, received ``S_out (N-1) // N``;
- ``all_reduce`` of ``S``: ``2 S (N-1) // N`` each way (ring algorithm);
- ``p2p``: the bytes of each send / receive;
- nothing at all when ``N == 1``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .config import GroupShape
from .hardware import HardwareProfile

KINDS = ("all_gather", "reduce_scatter", "all_to_all", "p2p", "all_reduce")
PHASES = ("forward", "backward", "grad_sync")


@dataclass(frozen=True)
class Call:
    """One communication call (or ``count`` identical ones) of one rank.

    ``nbytes`` is the tensor size the ledger formula takes (see the module doc); for ``p2p`` the
    bytes this rank sends to the next rank (``fwd``) and to the previous one (``bwd``) and receives
    from the previous (``recv_fwd``) and next (``recv_bwd``) are given explicitly. ``ledger`` gives
    ``(sent, received)`` of one call directly (the calls built from an op's closed form: see
    :func:`calls_of`). ``scope`` names the process group (``"sp"``, ``"ulysses"``, ``"ring"``) for the
    time model.
    """

    kind: str
    phase: str
    group: int
    nbytes: int = 0
    count: int = 1
    scope: str = "sp"
    out_nbytes: int | None = None  # all_to_all output size (default: same as nbytes)
    send_fwd: int = 0
    send_bwd: int = 0
    recv_fwd: int = 0
    recv_bwd: int = 0
    hops: int = 1  # p2p: how many ring hops the message travels (1: neighbours)
    ledger: tuple[int, int] | None = None  # (sent, received) of one call as an op's closed form gives them

    def ledger_bytes(self) -> tuple[int, int]:
        """``(sent, received)`` of ONE call, exactly as the ledger records it."""
        n = self.group
        if n <= 1:
            return 0, 0
        if self.ledger is not None:
            return self.ledger
        if self.kind == "all_gather":
            return (n - 1) * self.nbytes, (n - 1) * self.nbytes
        if self.kind == "reduce_scatter":
            s = self.nbytes * (n - 1) // n
            return s, s
        if self.kind == "all_to_all":
            out = self.nbytes if self.out_nbytes is None else self.out_nbytes
            return self.nbytes * (n - 1) // n, out * (n - 1) // n
        if self.kind == "all_reduce":
            s = 2 * self.nbytes * (n - 1) // n
            return s, s
        if self.kind == "p2p":
            return self.send_fwd + self.send_bwd, self.recv_fwd + self.recv_bwd
        raise ValueError(f"Call.kind: expected one of {KINDS}, got {self.kind!r}")


def p2p(phase: str, group: int, *, send_fwd=0, send_bwd=0, recv_fwd=None, recv_bwd=None, count=1,
        scope="sp", hops=1) -> Call:
    """A ring exchange: by default each rank receives what it sends (symmetric schedules)."""
    return Call("p2p", phase, group, count=count, scope=scope, send_fwd=int(send_fwd), send_bwd=int(send_bwd),
                recv_fwd=int(send_fwd if recv_fwd is None else recv_fwd),
                recv_bwd=int(send_bwd if recv_bwd is None else recv_bwd), hops=hops)


def calls_of(kind: str, phase: str, group: int, sent: int, received: int | None = None, *, count: int = 1,
             scope: str = "sp") -> Call:
    """``count`` equal calls that move ``sent`` / ``received`` bytes in all (an op's closed-form
    totals; ``received`` defaults to ``sent``). One call of the whole when the totals do not split
    evenly."""
    received = sent if received is None else received
    if count < 1 or sent % count or received % count:
        count = 1
    s, r = sent // count, received // count
    if kind == "p2p":
        return p2p(phase, group, send_fwd=s, recv_fwd=r, count=count, scope=scope)
    return Call(kind, phase, group, count=count, scope=scope, ledger=(s, r))


class CommVolume:
    """Bytes one rank sends and receives, per phase (``forward``, ``backward``, ``grad_sync``) and per
    ledger kind (``all_gather``, ``reduce_scatter``, ``all_to_all``, ``p2p``, ``all_reduce``).

    Example::

        >>> v = CommVolume([Call("all_gather", "forward", 4, nbytes=100)])
        >>> v.received(), v.received(kind="all_gather", phase="forward"), v.by_kind()
        (300, 300, {'all_gather': (300, 300)})
    """

    def __init__(self, calls=()):
        self.calls: tuple[Call, ...] = tuple(calls)
        self._cache: dict | None = None

    def _table(self) -> dict:
        if self._cache is not None:
            return self._cache
        t = defaultdict(lambda: [0, 0, 0])
        for c in self.calls:
            s, r = c.ledger_bytes()
            if c.group <= 1:
                continue
            e = t[(c.phase, c.kind)]
            e[0] += s * c.count
            e[1] += r * c.count
            e[2] += c.count
        self._cache = dict(t)
        return self._cache

    def _sum(self, idx: int, kind, phase) -> int:
        phases = (phase,) if isinstance(phase, str) else (PHASES if phase is None else tuple(phase))
        kinds = (kind,) if isinstance(kind, str) else (KINDS if kind is None else tuple(kind))
        return sum(v[idx] for (p, k), v in self._table().items() if p in phases and k in kinds)

    def sent(self, kind=None, phase=None) -> int:
        """Bytes sent, optionally of one kind / phase (or a tuple of them)."""
        return self._sum(0, kind, phase)

    def received(self, kind=None, phase=None) -> int:
        """Bytes received, optionally of one kind / phase (or a tuple of them)."""
        return self._sum(1, kind, phase)

    def by_kind(self, phases=("forward", "backward", "grad_sync")) -> dict[str, tuple[int, int]]:
        """``{kind: (sent, received)}`` over ``phases``, kinds with traffic only (ledger layout)."""
        out: dict[str, list[int]] = {}
        for (p, k), (s, r, _) in self._table().items():
            if p in phases and (s or r):
                e = out.setdefault(k, [0, 0])
                e[0] += s
                e[1] += r
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def as_dict(self) -> dict:
        """``{phase: {kind: {"sent", "received", "calls"}}}``."""
        out: dict = {}
        for (p, k), (s, r, n) in sorted(self._table().items()):
            out.setdefault(p, {})[k] = {"sent": s, "received": r, "calls": n}
        return out

    def diff(self, ledger, phases=("forward", "backward")) -> dict:
        """Differences against a measured ledger (a ``CommLedger`` or its ``as_dict()``), ignoring
        ``metadata``: ``{kind: {"model": (sent, received), "ledger": (sent, received)}}`` for every
        kind that disagrees (empty when they agree). The model's ``phases`` must be the ones the
        ledger was open for.

        Example (a test, one line per strategy)::

            assert not costmodel.comm_volume("ring", m, 64, 1, 4, "float32", layer="all").diff(ledger)
        """
        d = ledger.as_dict() if hasattr(ledger, "as_dict") else ledger
        measured = {k: (v["sent"], v["received"]) for k, v in d.get("by_kind", {}).items()
                    if k != "metadata" and (v["sent"] or v["received"])}
        model = self.by_kind(phases)
        return {k: {"model": model.get(k, (0, 0)), "ledger": measured.get(k, (0, 0))}
                for k in sorted(set(model) | set(measured)) if model.get(k, (0, 0)) != measured.get(k, (0, 0))}

    def __add__(self, other: "CommVolume") -> "CommVolume":
        return CommVolume(self.calls + other.calls)

    def __repr__(self) -> str:
        parts = [f"{p}.{k}: recv {r}" for (p, k), (s, r, n) in sorted(self._table().items())]
        return "CommVolume(" + ", ".join(parts) + ")"


# ---- time model ---------------------------------------------------------------------------------

def _busbw(hw: HardwareProfile, shape: GroupShape) -> float:
    """Bus bandwidth (B/s) of a ring collective on a group. Across nodes NCCL runs one ring per
    rail (NIC), so the per-GPU bus bandwidth is the NIC bandwidth times the group's GPUs per node,
    capped by the intra-node bus bandwidth."""
    if shape.nodes <= 1:
        return hw.intra.coll_busbw_gbps * 1e9
    return min(hw.intra.coll_busbw_gbps, hw.inter.coll_busbw_gbps * shape.per_node) * 1e9


def _hop_latency(hw: HardwareProfile, shape: GroupShape) -> float:
    return (hw.inter.latency_us if shape.nodes > 1 else hw.intra.latency_us) * 1e-6


def call_time(c: Call, hw: HardwareProfile, shape: GroupShape) -> float:
    """Seconds one call takes on ``shape`` (not counting ``c.count``), including its launch cost.

    Ring all-gather / reduce-scatter: ``(N-1)`` hops of latency plus the bytes received over the
    bus bandwidth; all-reduce: twice that; all-to-all: the intra-node and inter-node parts of each
    rank's traffic go over NVLink and the NIC in parallel; p2p: the busier direction over the
    slowest link on the ring (a neighbour exchange whose ring crosses nodes has an inter-node hop).
    """
    n = c.group
    if n <= 1:
        return 0.0
    launch = hw.collective_launch_us * 1e-6
    lat = _hop_latency(hw, shape)
    sent, recv = c.ledger_bytes()
    if c.kind in ("all_gather", "reduce_scatter"):
        return launch + (n - 1) * lat + recv / _busbw(hw, shape)
    if c.kind == "all_reduce":
        return launch + 2 * (n - 1) * lat + recv / _busbw(hw, shape)
    if c.kind == "all_to_all":
        per = max(sent, recv)
        if shape.nodes <= 1:
            return launch + lat + per / (hw.intra.p2p_gbps * 1e9)
        intra_frac = (shape.per_node - 1) / (n - 1)
        t_intra = per * intra_frac / (hw.intra.p2p_gbps * 1e9)
        t_inter = per * (1 - intra_frac) / (hw.inter.p2p_gbps * 1e9)
        return launch + lat + max(t_intra, t_inter)
    if c.kind == "p2p":
        link = hw.inter if shape.nodes > 1 else hw.intra
        both = (c.send_fwd or c.recv_fwd) and (c.send_bwd or c.recv_bwd)
        bw = link.p2p_gbps * 1e9 * (link.duplex if both else 1.0)
        per_dir = max(c.send_fwd, c.recv_fwd, c.send_bwd, c.recv_bwd)
        return launch + c.hops * lat + per_dir / bw
    raise ValueError(f"Call.kind: expected one of {KINDS}, got {c.kind!r}")


__all__ = ["KINDS", "PHASES", "Call", "CommVolume", "call_time", "calls_of", "p2p"]
