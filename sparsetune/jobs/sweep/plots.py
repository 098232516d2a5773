"""Plot helpers shared by the sweep's PNG (report.py) and the reproduction's (scripts/repro/report.py):
a headless figure, a mean ± std line over seeds, and the save. matplotlib is imported on first use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def as_float(value: Any) -> float | None:
    """An axis value as a number (swept values are text), None when it is not one."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def figure(size: tuple[float, float], dpi: int = 120) -> tuple[Any, Any]:
    """A figure and its axes on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=dpi)


def mean_line(ax: Any, xs: Sequence[float], means: Sequence[float], stds: Sequence[float | None], label: str) -> None:
    """One line of means; error bars of the std over seeds wherever some point has one."""
    if any(s is not None for s in stds):
        ax.errorbar(xs, means, yerr=[s or 0.0 for s in stds], marker="o", capsize=3, label=label)
    else:
        ax.plot(xs, means, marker="o", label=label)


def save_figure(fig: Any, path: Path) -> Path:
    """Write the PNG (its folder made if needed) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def close_figure(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
