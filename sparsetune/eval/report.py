"""Console tables for eval results and end-of-run summaries (rich)."""

from __future__ import annotations

import math
from typing import Any, Optional

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def format_value(value: Any) -> str:
    """Integers (counts, params) with separators, fractions with 4 decimals, others with 4 significant."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value.is_integer():
            return str(int(value))
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def _columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for metrics in rows.values():
        for key, value in metrics.items():
            if key not in cols and not isinstance(value, (dict, list)):
                cols.append(key)
    return cols


def _cell(metrics: dict[str, Any], col: str, with_stderr: bool) -> str:
    """`0.5333 ± 0.0409` where the metric has a standard error, else the plain value."""
    text = format_value(metrics.get(col))
    err = metrics.get(f"{col}_stderr") if with_stderr else None
    return f"{text} ± {format_value(err)}" if isinstance(err, (int, float)) and text != "-" else text


def print_table(title: str, rows: dict[str, dict[str, Any]], console: Optional[Any] = None) -> None:
    """One row per key of `rows`, one column per metric (nested values such as per_class are skipped;
    a metric's `<name>_stderr` is shown in its cell as `value ± stderr`).

    Numbers are never cut: when the table would not fit the console (a narrow terminal, or a log file,
    where rich assumes 80 columns), it is printed vertically instead, one `row  metric  value` line per
    cell."""
    console = console or Console()
    cols = _columns(rows)
    errs = {c for c in cols if f"{c}_stderr" in cols}
    cols = [c for c in cols if not (c.endswith("_stderr") and c[:-7] in errs)]
    cells = {str(name): [(c, _cell(metrics, c, c in errs)) for c in cols] for name, metrics in rows.items()}
    table = Table(title=title, title_justify="left")
    table.add_column("", style="bold", no_wrap=True, overflow="fold")
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True, overflow="fold")
    for name, values in cells.items():
        table.add_row(name, *(v for _, v in values))
    if Measurement.get(console, console.options.update_width(10**6), table).maximum <= console.width:
        console.print(table)
        return
    _print_vertical(title, cells, console)


def _print_vertical(title: str, cells: dict[str, list[tuple[str, str]]], console) -> None:
    """`row  metric  value`, one line per cell, aligned; long lines are left whole (never cropped)."""
    name_w = max((len(n) for n in cells), default=0)
    metric_w = max((len(c) for values in cells.values() for c, _ in values), default=0)
    value_w = max((len(v) for values in cells.values() for _, v in values), default=0)
    console.print(Text(title, style="bold"), soft_wrap=True)
    for name, values in cells.items():
        for col, value in values:
            line = f"{name:<{name_w}}  {col:<{metric_w}}  {value:>{value_w}}".rstrip()
            console.print(Text(line), soft_wrap=True)


def format_eval(results: dict[str, dict[str, Any]]) -> str:
    """One line for logs: 'task: acc=0.5123 acc_norm=0.5000 | task2: exact_match=0.2500'."""
    parts = []
    for task, metrics in results.items():
        shown = " ".join(f"{k}={format_value(v)}" for k, v in metrics.items()
                         if not isinstance(v, (dict, list)) and k != "n" and not k.endswith("_stderr"))
        parts.append(f"{task}: {shown}" if shown else str(task))
    return " | ".join(parts)
