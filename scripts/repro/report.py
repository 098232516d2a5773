"""reports/REPRODUCE.md from the finished runs: one section per table with the paper's figures,
our rows (mean ± standard error over seeds and items, repro/stats.py), the command behind every row, PNG
plots, a short reading and every declared difference read mechanically ("beyond 2 SE" / "within noise").
What counts as a figure and the figure/line/save helpers are the sweeps' (sparsetune/jobs/sweep/report.py,
plots.py); the layout of the report is this file's."""

from __future__ import annotations

import json
import os
import platform
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from repro.plan import Bench, Run, Table
from repro.runner import Layout, bench_command, lane_label, run_command, shown, then_command, timings
from repro.stats import ItemScores, describe, difference, magnitude, mean_se, paired_difference, se_of_mean
from sparsetune.jobs.sweep.plots import close_figure, figure, mean_line, save_figure
from sparsetune.jobs.sweep.report import mean_std, number


def lookup(tree: Any, path: str) -> Any:
    """summary["a"]["b"] for "a.b"; None when absent."""
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def column_value(item: Any, path: str | tuple[str, ...]) -> tuple[Any, Any]:
    """(value, its item standard error) of a column: one summary figure, or the mean of several (a row
    that reads a subset of another row's tasks) with the standard error of a mean of independent
    estimates, as sparsetune's "average" row computes it; (None, None) when a figure is missing."""
    if isinstance(path, str):
        return lookup(item, path), lookup(item, f"{path}_stderr")
    pairs = [column_value(item, p) for p in path]
    if not pairs or not all(number(v) for v, _ in pairs):
        return None, None
    se = se_of_mean([float(e) for _, e in pairs]) if all(number(e) for _, e in pairs) else None
    return sum(float(v) for v, _ in pairs) / len(pairs), se


def aggregate(values: list[Any], errors: list[Any] | None = None) -> dict[str, Any]:
    """mean/std/se/n over the seeds that have a number (`errors`: each seed's item standard error, same
    order; "items" says every counted seed had one); text (labels) once when all seeds agree, else the
    distinct labels in seed order, separated by " / " (e.g. the classes a random task sequence drew per seed)."""
    errors = errors if errors is not None else [None] * len(values)
    pairs = [(float(x), e) for x, e in zip(values, errors) if number(x)]
    if pairs:
        numbers = [x for x, _ in pairs]
        item = [float(e) for _, e in pairs if number(e)]
        items = len(item) == len(pairs)
        mean, std = mean_std(numbers)
        return {"mean": mean, "std": std, "se": mean_se(numbers, item if items else None), "items": items,
                "n": len(numbers)}
    texts = [str(v) for v in values if v is not None and not isinstance(v, float)]
    return {"text": " / ".join(dict.fromkeys(texts)) if len(set(texts)) > 1 else (texts[0] if texts else None),
            "n": 0}


def fmt_number(x: float) -> str:
    if x.is_integer():
        return f"{int(x):,}"
    if abs(x) < 0.01:  # small figures (GMACs of a tiny ViT, Acc_f near zero) keep two significant digits
        return f"{x:.2g}"
    if abs(x) < 1:
        return f"{x:.3f}"
    return f"{x:,.2f}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_cell(cell: dict[str, Any]) -> str:
    """mean ± its standard error (none shown for a single seed of a figure without item errors)."""
    if "mean" not in cell:
        return cell.get("text") or "–"
    text = fmt_number(cell["mean"])
    if not cell.get("se"):
        return text
    se = cell["se"]  # no more digits than the mean shows (5,078 ± 177, not ± 177.38)
    return f"{text} ± {f'{se:,.0f}' if abs(cell['mean']) >= 1000 or se >= 10 else fmt_number(se)}"


def _items(summary: dict[str, Any], run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(label, item) pairs: the whole summary, or the rows inside summary[run.expand]."""
    if run.expand is None:
        return [("", summary)]
    inner = lookup(summary, run.expand)
    if isinstance(inner, list):
        return [(str(item.get("task", i + 1)), item) for i, item in enumerate(inner) if isinstance(item, dict)]
    if isinstance(inner, dict):
        return [(str(k), v) for k, v in inner.items() if isinstance(v, dict)]
    return []


def read_summary(folder: Path) -> dict[str, Any]:
    """A run's summary.json. Runs written before the training and whole-process peaks were told apart
    (no `process_peak_memory_mb`) report the whole process as `peak_memory_mb`, held-out eval included:
    for a training run their training peak is the last peak metrics.jsonl logged, read from there."""
    summary = json.loads((folder / "summary.json").read_text())
    metrics = folder / "metrics.jsonl"
    trained = "throughput" in summary and "peak_memory_mb" in summary  # jobs/train.py's summary
    if "process_peak_memory_mb" in summary or not trained or not metrics.is_file():
        return summary
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    peaks = [r["peak_memory_mb"] for r in records if number(r.get("peak_memory_mb"))]
    if peaks:
        summary["process_peak_memory_mb"], summary["peak_memory_mb"] = summary["peak_memory_mb"], peaks[-1]
    return summary


def item_scores(folder: Path, tasks: tuple[str, ...], metric: str = "acc") -> ItemScores | None:
    """Each task's per-item `metric` by lm-eval doc_id, from the run's final evaluation records
    (<run>/eval/test/samples_<task>.jsonl, written under eval.log_samples); None when a task has none."""
    out: ItemScores = {}
    for task in tasks:
        path = folder / "eval" / "test" / f"samples_{task}.jsonl"
        if not path.is_file():
            return None
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[task] = {r["doc_id"]: float(r[metric]) for r in records if number(r.get(metric))}
    return out


def run_rows(layout: Layout, run: Run, paired: dict[str, tuple[str, ...]] | None = None) -> list[dict[str, Any]]:
    """Rows of one Run: {"row": label, "seeds": n, column: aggregated cell, ...}; with `paired` (column ->
    the tasks its figure averages, Table.paired) also "items": {column: {seed: per-item scores}} for the
    columns whose records every finished seed kept."""
    per_item: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    items: dict[str, dict[int, ItemScores | None]] = defaultdict(dict)
    order: list[str] = []
    seeds_done = 0
    recorded = timings(layout)["tasks"]
    spent = [sum(v for k, v in recorded.items() if k == lane_label(run, seed) or k.startswith(f"{lane_label(run, seed)} ("))
             for seed in layout.seeds(run) if lane_label(run, seed) in recorded]
    minutes = sum(spent) / len(spent) / 60 if spent else None
    for seed in layout.seeds(run):
        folder = layout.finished_run(run, seed)
        if folder is None:
            continue
        seeds_done += 1
        summary = read_summary(folder)
        if run.expand is None:
            for column, tasks in (paired or {}).items():
                if column in run.columns:
                    items[column][seed] = item_scores(folder, tasks)
        for label, item in _items(summary, run):
            if label not in order:
                order.append(label)
            for column, path in run.columns.items():
                value, error = column_value(item, path)
                per_item[label][column].append(value)
                per_item[label][f"{column}\0se"].append(error)
    if not order:
        if not layout.seeds(run):
            return []  # not part of this mode (QUICK runs a subset of the rows)
        return [{"row": run.name, "seeds": 0, "minutes": minutes,
                 **{c: {"text": "not run", "n": 0} for c in run.columns}}]
    rows = []
    for label in order:
        name = run.name if not label else f"{run.name} · {'task ' + label if run.expand == 'tasks' else label}"
        cells = {c: aggregate(per_item[label][c], per_item[label][f"{c}\0se"]) for c in run.columns}
        rows.append({"row": name, "seeds": seeds_done, "minutes": minutes, **cells,
                     "items": {c: by_seed for c, by_seed in items.items() if all(v is not None for v in by_seed.values())}})
    return rows


def measured_differences(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each declared pair (and each published reference) that both sides have a figure for:
    {"a", "b", "column", "diff" (repro/stats.py), "cells" (A, B), "source" (a reference's, else None)}."""
    by_name = {r["row"]: r for r in rows}
    found = []
    for a, b, col in table.compare:
        ca, cb = (by_name.get(a, {}).get(col, {}), by_name.get(b, {}).get(col, {}))
        ia, ib = (by_name.get(a, {}).get("items", {}).get(col), by_name.get(b, {}).get("items", {}).get(col))
        diff = (paired_difference(ia, ib) if ia and ib else None) or difference(ca, cb)
        if diff is not None:
            found.append({"a": a, "b": b, "column": col, "diff": diff, "cells": (ca, cb), "source": None})
    for row, col, value, source in table.reference:  # a published figure has no SE of ours: only the row's counts
        cell = by_name.get(row, {}).get(col, {})
        published = {"mean": value, "se": 0.0, "items": cell.get("items")}
        diff = difference(cell, published)
        if diff is not None:
            found.append({"a": row, "b": f"published {fmt_number(value)}", "column": col, "diff": diff,
                          "cells": (cell, published), "source": source})
    return found


def comparisons(table: Table, rows: list[dict[str, Any]]) -> list[str]:
    """'A − B, col: +3.1 points ± 1.2 (2.6 SE): beyond 2 SE (A 0.437 ± 0.009 vs B 0.406 ± 0.008; 3 and 3
    seeds)' for each declared pair, read by repro/stats.py."""
    lines = []
    for m in measured_differences(table, rows):
        ca, cb = m["cells"]
        if m["source"] is None:
            lines.append(f"- {m['a']} − {m['b']}, {m['column']}: {describe(m['diff'])} ({fmt_cell(ca)} vs "
                         f"{fmt_cell(cb)}; {ca['n']} and {cb['n']} seed(s))")
        else:
            lines.append(f"- {m['a']}, {m['column']} − {m['b']} ({m['source']}): {describe(m['diff'])} "
                         f"(ours {fmt_cell(ca)})")
    return lines


README_BEGIN, README_END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def table_rows(layout: Layout, tables: list[Table], runs: list[Run]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """table name -> run name -> its rows (run_rows, paired records where the table declares them)."""
    return {t.name: {r.name: run_rows(layout, r, t.paired) for r in runs if r.table == t.name} for t in tables}


def readme_table(tables: list[Table], rows_by_table: dict[str, dict[str, list[dict[str, Any]]]],
                 per_table: int = 4) -> str:
    """README's reproduction table: every table's first `per_table` measured differences (references
    included), each with both figures, its standard error and the mechanical reading."""
    lines = ["| table | difference | figures (mean ± SE, seeds) | measured | reading |", "|---|---|---|---|---|"]
    for table in tables:
        rows = [row for rows in rows_by_table[table.name].values() for row in rows]
        for m in measured_differences(table, rows)[:per_table]:
            ca, cb = m["cells"]
            figures = (f"{fmt_cell(ca)} ({ca['n']}) vs {fmt_cell(cb)}" + (f" ({cb['n']})" if m["source"] is None else ""))
            reading = "–" if m["diff"]["se"] is None else f"**{m['diff']['reading']}**"
            lines.append(f"| {table.name} | {m['a']} − {m['b']}, {m['column']} | {figures} | "
                         f"{magnitude(m['diff'])} | {reading} |")
    return "\n".join(lines)


def update_readme(readme: Path, table: str, source: str) -> bool:
    """Replace what sits between README_BEGIN and README_END with `table` (and where it came from);
    False, with nothing written, when the markers are missing."""
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    body = f"{README_BEGIN}\n{table}\n\n{source}\n{README_END}"
    readme.write_text(text[:start] + body + text[end + len(README_END):])
    return True


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """The rows, their seeds and what one seed's commands took (minutes, from timings.json)."""
    lines = ["| " + " | ".join(["", *columns, "seeds", "min / seed"]) + " |", "|" + "---|" * (len(columns) + 3)]
    for row in rows:
        cells = [fmt_cell(row[c]) if c in row else "–" for c in columns]
        cost = f"{row['minutes']:.1f}" if row.get("minutes") is not None else "–"
        lines.append("| " + " | ".join([row["row"], *cells, str(row["seeds"]), cost]) + " |")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n} command{'' if n == 1 else 's'}"


def time_taken(layout: Layout) -> str:
    """One line: the commands' total process time and each invocation's wall clock."""
    data = timings(layout)
    total = sum(data["tasks"].values())
    if not total:
        return "- Time: not recorded (no command finished under this results root)."
    benches = sum(v for k, v in data["tasks"].items() if k.split("/", 1)[-1].startswith("bench "))
    runs = " + ".join(f"{i['wall_s'] / 60:.0f} min ({i['date']}, JOBS={i['jobs']}, {_count(i['commands'])}"
                      f"{', interrupted' if i.get('interrupted') else ''})" for i in data["invocations"])
    return (f"- Time: {_count(len(data['tasks']))} took {total / 3600:.1f} h of process time "
            f"(the benches {benches / 60:.0f} min of it); wall clock: {runs or 'not recorded'}.")


def bench_tables(path: Path, bench: Bench) -> str:
    """One markdown table per setting of a `sparsetune bench` JSON, ratios with their min–max over rounds."""
    if not path.is_file():
        return f"_{bench.name}: not run._"
    data = json.loads(path.read_text())
    out = [f"{data.get('n_rounds', 1)} round(s), device {data.get('device', {}).get('device', '?')}, "
           f"{data.get('device', {}).get('threads', '?')} threads{' (quick shapes)' if data.get('quick') else ''}."]
    for setting, block in data.get("blocks", {}).items():
        base = block.get("baseline")
        metrics = [m for m in bench.metrics if any(m in v for v in block["variants"].values())]
        if not metrics:  # a block measuring something else (e.g. S²FT's adapter switch): its own doc has it
            continue
        ratio_keys = sorted({k for v in block["variants"].values() for k in v
                             if "_vs_" in k and not k.endswith("_range") and k.split("_vs_")[0] in metrics})
        cols = [*metrics, *ratio_keys]
        lines = [f"\n**{setting}** (baseline `{base}`)\n", "| variant | " + " | ".join(cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for name, variant in block["variants"].items():
            cells = []
            for col in cols:
                value = variant.get(col)
                if not number(value):
                    cells.append("–")
                    continue
                cell = fmt_number(float(value)) + ("×" if "_vs_" in col else "")
                span = variant.get(f"{col}_range")
                if span and len(span) == 2 and span[0] != span[1]:
                    cell += f" ({fmt_number(span[0])}–{fmt_number(span[1])})"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n".join(out)


def _bars(ax: Any, spec: dict, rows: list[dict[str, Any]]) -> bool:
    """Grouped bars: one group per column, one bar per row (± SE), rows without a value left out."""
    columns = spec["bars"]
    rows = [r for r in rows if any("mean" in r.get(c, {}) for c in columns)]
    if not rows:
        return False
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        cells = [row.get(c, {}) for c in columns]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, [c.get("mean", 0.0) for c in cells], width, yerr=[c.get("se") or 0.0 for c in cells],
               capsize=2, label=row["row"])
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return True


def _lines(ax: Any, spec: dict, rows_by_run: dict[str, list[dict[str, Any]]]) -> bool:
    """x/y: one line per run with ± SE error bars, an optional dashed second y axis."""
    ax2 = ax.twinx() if spec.get("y2") else None
    drawn = False
    for name, rows in rows_by_run.items():
        pts = [(r[spec["x"]]["mean"], r[spec["y"]]["mean"], r[spec["y"]].get("se"),
                (r.get(spec.get("y2")) or {}).get("mean")) for r in rows
               if "mean" in r.get(spec["x"], {}) and "mean" in r.get(spec["y"], {})]
        if not pts:
            continue
        pts.sort(key=lambda p: p[:2])
        xs, ys, es, y2 = zip(*pts)
        mean_line(ax, xs, ys, es, f"{name}: {spec['y']}")
        if ax2 is not None and all(v is not None for v in y2):
            ax2.plot(xs, y2, linestyle="--", marker="s", alpha=0.6, label=f"{name}: {spec['y2']}")
        drawn = True
    ax.set_xlabel(spec["x"])
    ax.set_ylabel(spec["y"])
    if drawn and all(float(x).is_integer() for line in ax.lines for x in line.get_xdata()):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel(spec["y2"])
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="best")
    return drawn


def plot(table: Table, rows_by_run: dict[str, list[dict[str, Any]]], out: Path) -> Path | None:
    """The table's PNG: grouped bars of the given columns for every row (`{"bars": [column, ...]}`), or an
    x/y line plot per run (`{"x": …, "y": …, "y2": …}`); None when the table has no plot or no data."""
    spec = table.plot
    if not spec:
        return None
    fig, ax = figure((8, 4.5) if "bars" in spec else (6, 4))
    if "bars" in spec:
        drawn = _bars(ax, spec, [row for rows in rows_by_run.values() for row in rows])
    else:
        drawn = _lines(ax, spec, rows_by_run)
    if not drawn:
        close_figure(fig)
        return None
    ax.set_title(table.title, fontsize=9)
    return save_figure(fig, out)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("sparsetune", "torch", "transformers", "peft", "lm-eval", "hydra-core", "wandb"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def _hardware() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, {platform.platform()}"


def write_report(layout: Layout, tables: list[Table], runs: list[Run], benches: list[Bench], out: Path,
                 failures: list[str] | None = None) -> Path:
    """Write the markdown report (and its PNGs beside it, under <out stem>-plots/)."""
    make = " ".join(["make reproduce", *(["QUICK=1"] if layout.quick else []),
                     *([f"JOBS={layout.jobs}"] if layout.jobs > 1 else [])])
    script = " ".join(["python scripts/reproduce.py", *(["--quick"] if layout.quick else []),
                       *([f"--jobs {layout.jobs}"] if layout.jobs > 1 else [])])
    parts = [f"# sparsetune reproduction report{' (QUICK smoke run)' if layout.quick else ''}", "",
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `{make}` (`{script}`), from the runs "
             f"under `{shown(layout.root)}/`.", "",
             f"- Hardware: {_hardware()}", f"- Libraries: {_versions()}", time_taken(layout),
             "- Every row's exact command is listed under its table; each (row, seed) ran in its own process "
             "with `seed=<k>` and its own run folder; cells are mean ± standard error over the seeds shown (accuracies: "
             "seeds and held-out items, each seed scored on its own shard of the held-out pool; "
             "`scripts/repro/stats.py` says how), and every difference is read \"beyond 2 SE\" or \"within "
             "noise\" from those numbers."]
    if layout.jobs > 1:
        parts += [f"- Training/eval rows ran {layout.jobs} at a time ({layout.threads_per_job} "
                  "thread(s) each), so their step-time columns were measured beside another run; the bench tables "
                  "ran alone with every core and are the timing figures."]
    parts += [""]
    if layout.only_seeds is not None:
        parts += [f"> Seeds {', '.join(map(str, layout.only_seeds))} only (`--seeds`): a partial pass; each row's "
                  "standard error covers only the shards those seeds score.", ""]
    if layout.quick:
        parts += ["> QUICK mode: one seed, a subset of the rows, 3 training steps and a dozen eval items per run — "
                  "this checks that every table's chain runs end to end; its numbers are **not** results.", ""]
    if failures:
        parts += [f"> {len(failures)} command(s) failed: {', '.join(failures)} (see results logs).", ""]
    plots_dir = out.parent / f"{out.stem}-plots"
    rows_by_table = table_rows(layout, tables, runs)
    glance = []
    for table in tables:  # the first two measured differences of every table, up front
        measured = comparisons(table, [row for rows in rows_by_table[table.name].values() for row in rows])[:2]
        glance += [f"- **{table.title}**", *(f"  {line}" for line in measured)] if measured else []
    if glance:
        parts += ["## At a glance", "", *glance, "", "Details, every row and the bench tables follow.", ""]
    for table in tables:
        table_runs = [r for r in runs if r.table == table.name]
        table_benches = [b for b in benches if b.table == table.name]
        parts += [f"## {table.title}", "", f"**Paper:** {table.paper}", ""]
        rows_by_run = rows_by_table[table.name]
        if table_runs:
            columns = list(dict.fromkeys(c for r in table_runs for c in r.columns))
            all_rows = [row for rows in rows_by_run.values() for row in rows]
            parts += [markdown_table(columns, all_rows), ""]
        for bench in table_benches:
            parts += [bench_tables(layout.bench_file(bench), bench), ""]
        png = plot(table, rows_by_run, plots_dir / f"{table.name}.png")
        if png is not None:
            parts += [f"![{table.title}]({png.relative_to(out.parent).as_posix()})", ""]
        if table.reading:
            parts += [f"**Reading:** {table.reading}", ""]
        if table_runs:
            measured = comparisons(table, [row for rows in rows_by_run.values() for row in rows])
            parts += ["Measured differences:", "", *measured, ""] if measured else []
        commands = [f"sparsetune {' '.join(run_command(r, s, layout))}" + (f"   # read from {r.same_as.key}" if r.same_as else "")
                    for r in table_runs for s in layout.seeds(r)]
        commands += [f"sparsetune {' '.join(then_command(r, Path('<its run folder>'), layout))}"
                     for r in table_runs if r.then and layout.seeds(r)]
        commands += [f"sparsetune {' '.join(bench_command(b, layout.bench_file(b), layout.quick))}"
                     for b in table_benches]
        parts += ["<details><summary>commands</summary>", "", "```", *commands, "```", "", "</details>", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(parts)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    out.write_text(text)
    return out
