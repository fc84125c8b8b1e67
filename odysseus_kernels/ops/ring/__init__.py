"""The one ring of the package: a :class:`Schedule` run by :func:`run_schedule` (:mod:`.driver`),
built from a :class:`Rotation` (a payload visiting every rank) and a :class:`Relay` (an accumulator
travelling one hop behind it) (:mod:`.parts`), with every P2P tag named once in :mod:`.tags`.

Ring attention and RSA (:mod:`..attention`), TokenRing (a schedule of its own on the same driver)
and the TP GEMMs' ring (:mod:`..tp_gemm`) compose these; nothing else writes a ring loop.
"""
from . import tags
from .driver import NOTHING, Schedule, Transfers, run_schedule
from .parts import Relay, Rotation

__all__ = ["NOTHING", "Relay", "Rotation", "Schedule", "Transfers", "run_schedule", "tags"]
