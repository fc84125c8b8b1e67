"""The byte ledger: every byte ``comm/`` moves is recorded here while a ledger is active.

``with ok.comm_ledger() as ledger:`` collects what this rank sends and receives, in total and per
kind (``all_gather``, ``reduce_scatter``, ``all_to_all``, ``p2p``, ``all_reduce``, ``metadata``).
Ledgers nest (an inner ledger's traffic is also counted by the outer ones). With none active,
recording is a single empty-list check. Ledgers are process-wide (not thread-local) so that
backward passes run on autograd's device threads are counted too.

Accounting (bytes of this rank, ``s`` = local bytes, ``S`` = full-buffer bytes, N ranks):
all_gather of ``s``: sent (N-1)s, received (N-1)s; reduce_scatter of ``S``: sent and received
(N-1)/N S; all_to_all: everything but the chunk kept locally; all_reduce of ``S``: 2(N-1)/N S each
way (the ring algorithm's volume); p2p: the bytes of each send / receive.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field


@dataclass
class KindStats:
    """Traffic of one kind: bytes sent, bytes received, number of calls."""

    sent: int = 0
    received: int = 0
    calls: int = 0


@dataclass(eq=False)  # identity semantics: nested ledgers with equal counts are different ledgers
class CommLedger:
    """What this rank sent and received while the ledger was active."""

    by_kind: dict[str, KindStats] = field(default_factory=dict)

    @property
    def bytes_sent(self) -> int:
        return sum(s.sent for s in self.by_kind.values())

    @property
    def bytes_received(self) -> int:
        return sum(s.received for s in self.by_kind.values())

    def payload_received(self) -> int:
        """Bytes received excluding the small metadata checks."""
        return sum(s.received for k, s in self.by_kind.items() if k != "metadata")

    def payload_sent(self) -> int:
        """Bytes sent excluding the small metadata checks."""
        return sum(s.sent for k, s in self.by_kind.items() if k != "metadata")

    def record(self, kind: str, sent: int, received: int) -> None:
        st = self.by_kind.get(kind)
        if st is None:
            st = self.by_kind[kind] = KindStats()
        st.sent += int(sent)
        st.received += int(received)
        st.calls += 1

    def received(self, kind: str) -> int:
        """Bytes received of one kind (0 if none)."""
        st = self.by_kind.get(kind)
        return st.received if st else 0

    def sent(self, kind: str) -> int:
        """Bytes sent of one kind (0 if none)."""
        st = self.by_kind.get(kind)
        return st.sent if st else 0

    def reset(self) -> None:
        self.by_kind.clear()

    def as_dict(self) -> dict:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "by_kind": {k: vars(v).copy() for k, v in self.by_kind.items()},
        }


_lock = threading.Lock()
_active: list[CommLedger] = []


@contextlib.contextmanager
def comm_ledger():
    """Count this rank's communication inside the block.

    Example::

        with ok.comm_ledger() as ledger:
            out = ok.ring_attention(q, k, v)
        print(ledger.bytes_received, ledger.by_kind["p2p"].received)
    """
    ledger = CommLedger()
    with _lock:
        _active.append(ledger)
    try:
        yield ledger
    finally:
        with _lock:
            _active.remove(ledger)


def record(kind: str, sent: int, received: int) -> None:
    """Add traffic to every active ledger (no-op when none is active)."""
    if not _active:
        return
    with _lock:
        for ledger in _active:
            ledger.record(kind, sent, received)
