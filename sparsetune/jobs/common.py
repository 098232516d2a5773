"""What every job does at its end: print the method's notes and tables, publish an export, and show
the summary; one copy for train, prune, forget and eval."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sparsetune.engine.progress import console
from sparsetune.engine.run_folder import RunFolder
from sparsetune.eval.report import print_table
from sparsetune.paths import cache_dir

SUMMARY_KEYS = ("method", "model", "steps", "train_loss", "step_time_s", "throughput", "peak_memory_mb",
                "trainable_params", "total_params", "wall_time_s")


def show_method_output(method) -> None:
    """Methods return notices and tables; jobs print them (methods never print)."""
    for notice in method.notices():
        console.print(f"[yellow]{notice}[/yellow]")
    for title, rows in method.tables().items():
        print_table(title, rows)


def publish(export: Path, name: str) -> Path:
    """Copy an exported model into the model cache atomically (replacing an older copy)."""
    target = cache_dir("models") / name
    tmp = target.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    console.print(f"cached model as {target}")
    return target


def print_summary(summary: dict[str, Any], run: RunFolder, eval_title: str = "eval (held-out split)") -> None:
    print_table("summary", {"run": {k: summary[k] for k in SUMMARY_KEYS if k in summary}})
    if summary.get("eval"):
        print_table(eval_title, summary["eval"])
    console.print(f"[bold]run folder:[/bold] {run.path}")


def eval_log(results: dict[str, dict[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """{task: {metric: v}} → {"eval/task/metric": v} for the metric loggers (numbers only)."""
    return {f"{prefix}/{t}/{m}": v for t, r in results.items() for m, v in r.items() if isinstance(v, (int, float))}
