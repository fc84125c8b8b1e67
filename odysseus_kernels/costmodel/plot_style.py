"""One fixed look per strategy for every plot (planner, playground): a distinct colour AND a distinct
marker, and a line style that differs between strategies whose curves can coincide (ring and
zigzag have the same communication volume), so every line stays identifiable in print and in
greyscale. No matplotlib import here (pure data)."""
from __future__ import annotations

from .strategies import STRATEGIES

# 12 colours that stay apart (Okabe-Ito 8, extended by hand): no colour repeats below.
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442",
          "#7F3C8D", "#8C564B", "#7F7F7F", "#A6761D", "#1B9E77", "#E7298A")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "d", "p", "h", "8")
LINESTYLES = ("-", "--", "-.", ":")

ORDER = tuple(STRATEGIES) + tuple(s for s in ("lasp1",) if s not in STRATEGIES)


def strategy_style(strategy: str) -> dict:
    """``{"color", "marker", "linestyle", "markersize"}`` for ``strategy`` (stable across plots)."""
    if strategy in ORDER:
        i = ORDER.index(strategy)
    else:  # an unknown name still gets a deterministic look, after the known ones
        i = len(ORDER) + sum(map(ord, strategy)) % len(COLORS)
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)], "markersize": 7 if i % 2 else 5}


__all__ = ["COLORS", "MARKERS", "LINESTYLES", "ORDER", "strategy_style"]
