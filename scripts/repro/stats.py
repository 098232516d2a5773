"""Standard errors of the report's cells and the mechanical reading of a difference.

A cell is the mean of one figure over a row's seeds. Where the figure is an accuracy on held-out items,
each seed also reports its item standard error (lm-eval's, sqrt(p(1-p)/(n-1)) per task, combined over a
suite's tasks by eval/lm.py); the seeds of a row are scored on disjoint shards of the held-out pool
(scripts/repro/tasks.py), so they are independent estimates and

    SE(mean) = sqrt(max(s², mean of se_k²) / n)

with s the standard deviation over the n seeds: s² estimates item noise plus training noise, mean se_k²
the item noise alone, and the larger is used so that neither three seeds that happen to agree nor one
seed alone understates the noise. Without item errors (losses, times) SE = s / sqrt(n); one seed without
an item error has none. A difference of two rows has SE sqrt(SE_a² + SE_b²), as for independent rows:
conservative, since two rows scored on the same shards share their item noise, which a paired SE would
cancel. It is read "beyond 2 SE" when |difference| > 2 SE, else "within noise" — from the numbers, never
by hand.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

DECISIVE = 2.0  # |difference| / SE above which a difference is read as real
POINTS = 100.0  # accuracies are shown in points (percent)


def mean_se(values: Sequence[float], item_errors: Sequence[float] | None = None) -> float | None:
    """SE of the mean of `values` (one per seed); `item_errors`: each seed's item SE, or None."""
    n = len(values)
    if n == 0:
        return None
    spread = statistics.variance(values) if n > 1 else None
    items = None
    if item_errors is not None and len(item_errors) == n:
        items = sum(e * e for e in item_errors) / n
    if spread is None and items is None:
        return None
    return math.sqrt(max(spread or 0.0, items or 0.0) / n)


def difference(a: dict, b: dict) -> dict | None:
    """a − b of two cells ({"mean", "se", "items": bool}); None without both means. Accuracies (cells
    with item errors) are in points. `reading`: "beyond 2 SE", "within noise", or "no SE" when either
    cell has none (a single seed of a figure without item errors)."""
    if "mean" not in a or "mean" not in b:
        return None
    scale = POINTS if a.get("items") and b.get("items") else 1.0
    delta = (a["mean"] - b["mean"]) * scale
    if a.get("se") is None or b.get("se") is None:
        return {"delta": delta, "se": None, "z": None, "reading": "no SE", "points": scale == POINTS}
    se = math.hypot(a["se"], b["se"]) * scale
    z = abs(delta) / se if se > 0 else math.inf
    return {"delta": delta, "se": se, "z": z, "reading": "beyond 2 SE" if z > DECISIVE else "within noise",
            "points": scale == POINTS}


def magnitude(diff: dict) -> str:
    """'+4.0 points ± 1.3 (3.1 SE)' / '−0.012 (no standard error: one seed)'."""
    unit = " points" if diff["points"] else ""
    value = f"{diff['delta']:+.1f}{unit}" if diff["points"] else f"{diff['delta']:+.3g}"
    if diff["se"] is None:
        return f"{value} (no standard error: one seed)"
    se = f"{diff['se']:.1f}" if diff["points"] else f"{diff['se']:.2g}"
    return f"{value} ± {se} ({diff['z']:.1f} SE)"


def describe(diff: dict) -> str:
    """'+4.0 points ± 1.3 (3.1 SE): beyond 2 SE' / '−0.012 (no standard error: one seed)'."""
    return magnitude(diff) if diff["se"] is None else f"{magnitude(diff)}: **{diff['reading']}**"
