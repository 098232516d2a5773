"""Continual-forgetting figures from per-class accuracy: Acc_r, Acc_f, Acc_o and the H-mean; and the
heat map of group norms per task (which adapter groups group sparsity kept).

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


def group_norm_grid(reports: Sequence[dict]) -> tuple[list[str], list[list[float]]]:
    """(group names, one row of norms per task) from the tasks' group reports ({"group_norms": {name:
    norm}}); names in first-seen order, NaN where a task has no such group."""
    names: list[str] = []
    for rep in reports:
        names.extend(n for n in rep.get("group_norms", {}) if n not in names)
    rows = [[float(rep.get("group_norms", {}).get(n, float("nan"))) for n in names] for rep in reports]
    return names, rows


def plot_group_norms(names: Sequence[str], rows: Sequence[Sequence[float]], task_labels: Sequence[str],
                     path, title: str = "LoRA group norms after each task"):
    """Heat map of group norms, task x group (the paper's picture of which groups survive); exact zeros
    are printed as 0 in their cell. Written with matplotlib's Figure API (no global pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 + 0.9 * max(1, len(names)), 1.0 + 0.55 * max(1, len(rows))), dpi=120)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="viridis", aspect="auto", vmin=0.0)
    ax.set_xticks(range(len(names)), labels=list(names), rotation=45 if len(names) > 6 else 0, ha="right"
                  if len(names) > 6 else "center")
    ax.set_yticks(range(len(rows)), labels=list(task_labels))
    top = max((v for r in rows for v in r if v == v), default=0.0)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if v == v:
                text = "0" if v == 0 else f"{v:.2g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if v < 0.5 * top else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="‖group‖₂")
    fig.tight_layout()
    fig.savefig(path)
    return path
