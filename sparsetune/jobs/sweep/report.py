"""A sweep's results at a glance: the points as a table (console and summary.md), mean ± std over
seeds when `seed` is swept, and the swept metric's PNG. Reads only sweep.json's record,
so a rerun redraws everything from disk. `number` and `mean_std` are also the reproduction report's
(scripts/repro/report.py): one rule for what counts as a figure and how seeds aggregate."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsetune.eval.report import format_value, print_table
from sparsetune.jobs.sweep.plots import as_float, figure, mean_line, save_figure

SEED = "seed"
PREFERRED = ("eval/average/score",)  # the held-out split's average over its tasks, when there is one
SHOWN = ("train_loss", "step_time_s", "peak_memory_mb")  # next to the metric in the tables


def number(v: Any) -> bool:
    """A figure to tabulate or average: a finite int or float (not a bool, NaN or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1) over seeds; the std is None for a single value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """summary.json's numbers: top-level figures as they are, eval results as `eval/<task>/<metric>`
    (the names the metric loggers use)."""
    out = {k: v for k, v in summary.items() if number(v)}
    for task, results in (summary.get("eval") or {}).items():
        if isinstance(results, dict):
            out.update({f"eval/{task}/{m}": v for m, v in results.items()
                        if number(v) and m != "n" and not m.endswith("_stderr")})
    return out


def default_metric(points: list[dict[str, Any]]) -> str | None:
    keys = [k for p in points for k in p.get("metrics", {})]
    for key in PREFERRED:
        if key in keys:
            return key
    return next((k for k in keys if k.startswith("eval/")), "train_loss" if "train_loss" in keys else
                (keys[0] if keys else None))


def _bare(key: str) -> str:
    return key.lstrip("+~")


def groups(record: dict[str, Any], metric: str, x: str | None = None):
    """{line label: {x value: [metric over seeds]}} plus the x key; finished points only."""
    keys = [_bare(k) for k in record.get("grid", {})]
    x = x or next((k for k in keys if k != SEED), keys[0] if keys else None)
    others = [k for k in keys if k not in (x, SEED)]
    lines: dict[str, dict[str, list[float]]] = {}
    for p in record.get("points", []):
        value = p.get("metrics", {}).get(metric)
        if p.get("status") not in ("done", "skipped") or not number(value):
            continue
        params = {_bare(k): v for k, v in p.get("params", {}).items()}
        label = ", ".join(f"{k}={params[k]}" for k in others) or metric
        lines.setdefault(label, {}).setdefault(params.get(x, ""), []).append(float(value))
    return lines, x


def plot(record: dict[str, Any], metric: str, path: Path, x: str | None = None) -> Path | None:
    """The metric against the x key (numeric axis when every value is a number, log-scaled when they span
    two decades); error bars are the std over seeds."""
    lines, x = groups(record, metric, x)
    if not lines or x is None:
        return None
    seeds = len(record.get("grid", {}).get(SEED, [])) if x != SEED else 0
    order = list(dict.fromkeys(v for line in lines.values() for v in line))
    numeric = all(as_float(v) is not None for v in order)
    if numeric:
        order.sort(key=as_float)
    fig, ax = figure((6.4, 4.4))
    for label, by_x in lines.items():
        xs = [v for v in order if v in by_x]
        stats = [mean_std(by_x[v]) for v in xs]
        mean_line(ax, [as_float(v) if numeric else order.index(v) for v in xs], [m for m, _ in stats],
                  [s for _, s in stats] if seeds > 1 else [None] * len(stats), label)
    if numeric:
        vals = [as_float(v) for v in order]
        if min(vals) > 0 and max(vals) / min(vals) >= 100:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(order)), order, rotation=20 if max(map(len, order)) > 8 else 0)
    ax.set_xlabel(x)
    ax.set_ylabel(metric + (f" (mean ± std, {seeds} seeds)" if seeds > 1 else ""))
    ax.set_title(f"{record.get('name', 'sweep')}: {metric} vs {x}", fontsize=10)
    if len(lines) > 1 or next(iter(lines)) != metric:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def point_rows(record: dict[str, Any], metric: str | None) -> dict[str, dict[str, Any]]:
    rows = {}
    for p in record.get("points", []):
        row: dict[str, Any] = {_bare(k): v for k, v in p.get("params", {}).items()}
        row["status"] = p.get("status")
        for key in ([metric] if metric else []) + [k for k in SHOWN if k != metric]:
            if key in p.get("metrics", {}):
                row[key] = p["metrics"][key]
        row["seconds"] = p.get("seconds")
        rows[f"#{p['index']}"] = row
    return rows


def seed_rows(record: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds, one row per setting of the other swept keys."""
    lines, x = groups(record, metric)
    rows = {}
    for label, by_x in lines.items():
        for xv, values in by_x.items():
            mean, std = mean_std(values)
            name = ", ".join(p for p in (f"{x}={xv}" if x != SEED else "", label if label != metric else "") if p)
            rows[name or metric] = {f"{metric} mean": mean, "std": std, "seeds": len(values)}
    return rows


def _md_table(rows: dict[str, dict[str, Any]], first: str) -> list[str]:
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    out = [f"| {first} | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, row in rows.items():
        cells = [name, *(format_value(row.get(c)) for c in cols)]
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return out


def report(folder: Path, record: dict[str, Any], metric: str | None = None, x: str | None = None,
           console=None) -> dict[str, Any]:
    """Print the tables (stdout, like a run's summary), write summary.md and the plot; `console` gets
    the notices. Returns what was written."""
    points = record.get("points", [])
    metric = metric or default_metric(points)
    seeded = _bare(SEED) in {_bare(k) for k in record.get("grid", {})} and len(record["grid"].get(SEED, [])) > 1
    if metric and not any(metric in p.get("metrics", {}) for p in points):
        known = sorted({k for p in points for k in p.get("metrics", {})})
        if console is not None and known:
            console.print(f"[yellow]sweep.metric={metric} is in no point's summary.json; known: "
                          f"{', '.join(known)}[/yellow]", soft_wrap=True)
    rows = point_rows(record, metric)
    print_table(f"sweep {record.get('name', '')} ({len(points)} points)", rows)
    by_seed = seed_rows(record, metric) if metric and seeded else {}
    if by_seed:
        print_table(f"{metric}: mean ± std over seeds", by_seed)
    png = None
    if metric:
        png = plot(record, metric, folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', metric)}.png", x=x)
    md = [f"# sweep {record.get('name', '')}", "", f"`{record.get('command', '')}`", "",
          "grid: " + "; ".join(f"`{k}` = {', '.join(v)}" for k, v in record.get("grid", {}).items()), ""]
    if metric:
        md += [f"metric: `{metric}`", ""]
    md += _md_table({k: {**v, "run": p.get("run")} for (k, v), p in zip(rows.items(), points)}, "point")
    if by_seed:
        md += ["", f"## {metric}: mean ± std over seeds", "", *_md_table(by_seed, "setting")]
    if png is not None:
        md += ["", f"![{metric}]({png.name})"]
    (folder / "summary.md").write_text("\n".join(md) + "\n")
    return {"metric": metric, "plot": png, "summary": folder / "summary.md"}
