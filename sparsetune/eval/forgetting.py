"""Continual-forgetting figures from per-class accuracy: Acc_r, Acc_f, Acc_o and the H-mean.

Accuracies over a class set are the mean of per-class accuracies (class-balanced; Fashion-MNIST's
test split has 1,000 images per class, so this equals the sample-weighted figure there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def class_mean(per_class: Sequence[float | None], classes: Sequence[int]) -> float:
    vals = [per_class[c] for c in classes if per_class[c] is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def h_mean(acc_f_pre: float, acc_f: float, acc_r: float) -> float:
    """H = 2 (Acc_f^pre - Acc_f) Acc_r / ((Acc_f^pre - Acc_f) + Acc_r) (the paper's formula)."""
    drop = acc_f_pre - acc_f
    if math.isnan(drop) or math.isnan(acc_r) or drop + acc_r <= 0:
        return float("nan") if math.isnan(drop) or math.isnan(acc_r) else 0.0
    return 2.0 * drop * acc_r / (drop + acc_r)


def task_metrics(now: Sequence[float | None], before: Sequence[float | None], forgotten: Sequence[int],
                 earlier: Sequence[int], retained: Sequence[int]) -> dict[str, float]:
    """`before`: per-class accuracy of the model that entered this task (gives Acc_f^pre)."""
    acc_r, acc_f = class_mean(now, retained), class_mean(now, forgotten)
    acc_f_pre = class_mean(before, forgotten)
    return {
        "acc_r": acc_r,
        "acc_f": acc_f,
        "acc_o": class_mean(now, earlier) if earlier else float("nan"),
        "acc_f_pre": acc_f_pre,
        "h_mean": h_mean(acc_f_pre, acc_f, acc_r),
    }
