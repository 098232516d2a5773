"""Standard errors of the report's cells and the mechanical reading of a difference.

A cell is the mean of one figure over a row's seeds. Where the figure is an accuracy on held-out items,
each seed also reports its item standard error (lm-eval's, sqrt(p(1-p)/(n-1)) per task, combined over a
suite's tasks by eval/lm.py); the seeds of a row are scored on disjoint shards of the held-out pool
(scripts/repro/tasks.py), so they are independent estimates and

    SE(mean) = sqrt(max(s², mean of se_k²) / n)

with s the standard deviation over the n seeds: s² estimates item noise plus training noise, mean se_k²
the item noise alone, and the larger is used so that neither three seeds that happen to agree nor one
seed alone understates the noise. Without item errors (losses, times) SE = s / sqrt(n); one seed without
an item error has none.

A difference of two rows has SE sqrt(SE_a² + SE_b²), as for independent rows — unless both rows kept
per-item records of the same items (same seeds, so the same shards): then it is paired
(`paired_difference`): per seed k the per-item differences d = a − b give the difference D_k of the two
suite averages and its item SE (per task var(d) / n, combined over the suite's tasks as its average is),
and the seeds combine by the rule above. Two rows scored on the same items share the items' difficulty,
which the paired SE cancels and the independent one counts twice. Either way the difference is read
"beyond 2 SE" when |difference| > 2 SE, else "within noise" — from the numbers, never by hand.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

DECISIVE = 2.0  # |difference| / SE above which a difference is read as real
POINTS = 100.0  # accuracies are shown in points (percent)


def se_of_mean(errors: Sequence[float]) -> float:
    """SE of an unweighted mean of independent estimates with SEs `errors` (a suite average over its tasks,
    as sparsetune's own "average" row, eval/lm.py with_average)."""
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


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


# one seed's per-item scores of a row: task -> item id -> score (e.g. acc 0/1)
ItemScores = dict[str, dict[Any, float]]


def paired_difference(a: dict[int, ItemScores], b: dict[int, ItemScores]) -> dict | None:
    """a − b of two rows' suite averages (the unweighted mean over tasks of each task's mean), paired item by
    item on the seeds, tasks and items both have; in points. None when they share no seed with a task of
    two or more common items."""
    deltas, errors, n_items = [], [], 0
    for seed in sorted(set(a) & set(b)):
        means, errors_k = [], []
        for task in sorted(set(a[seed]) & set(b[seed])):
            common = sorted(set(a[seed][task]) & set(b[seed][task]), key=str)
            if len(common) < 2:
                continue
            d = [a[seed][task][i] - b[seed][task][i] for i in common]
            means.append(statistics.fmean(d))
            errors_k.append(math.sqrt(statistics.variance(d) / len(d)))
            n_items += len(d)
        if means:
            deltas.append(statistics.fmean(means))
            errors.append(se_of_mean(errors_k))
    if not deltas:
        return None
    delta, se = statistics.fmean(deltas) * POINTS, mean_se(deltas, errors) * POINTS
    z = abs(delta) / se if se > 0 else (0.0 if delta == 0 else math.inf)
    return {"delta": delta, "se": se, "z": z, "reading": "beyond 2 SE" if z > DECISIVE else "within noise",
            "points": True, "paired": n_items}


def magnitude(diff: dict) -> str:
    """'+4.0 points ± 1.3 (3.1 SE)' / '+0.4 points ± 0.3 (1.2 SE, paired over 2,933 items)' /
    '−0.012 (no standard error: one seed)'."""
    unit = " points" if diff["points"] else ""
    value = f"{diff['delta']:+.1f}{unit}" if diff["points"] else f"{diff['delta']:+.3g}"
    if diff["se"] is None:
        return f"{value} (no standard error: one seed)"
    se = f"{diff['se']:.1f}" if diff["points"] else f"{diff['se']:.2g}"
    paired = f", paired over {diff['paired']:,} items" if diff.get("paired") else ""
    return f"{value} ± {se} ({diff['z']:.1f} SE{paired})"


def describe(diff: dict) -> str:
    """'+4.0 points ± 1.3 (3.1 SE): beyond 2 SE' / '−0.012 (no standard error: one seed)'."""
    return magnitude(diff) if diff["se"] is None else f"{magnitude(diff)}: **{diff['reading']}**"
