"""Run a benchmark's variants in separate processes and print side-by-side ratios."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(stderr=True)


@dataclass
class Variant:
    name: str
    measure: str  # "module:function" run in the worker: fn(cfg, settings) -> dict of metrics
    overrides: list[str] = field(default_factory=list)


@dataclass
class Setting:
    """One block of the results (e.g. batch 4 × 256); every variant is measured under it."""

    name: str
    params: dict[str, Any]


@dataclass
class Benchmark:
    name: str
    variants: list[Variant]
    settings: list[Setting]
    baseline: str  # ratios are variant / baseline
    ratio_metrics: list[str]
    extra_ratios: list[tuple[str, str]] = field(default_factory=list)  # (variant, reference variant)
    # further blocks with their own variants: (setting, variants, baseline, ratio metrics)
    extra_blocks: list[tuple[Setting, list[Variant], str, list[str]]] = field(default_factory=list)


def _run_variant(variant: Variant, setting: Setting, timeout: int) -> dict[str, Any]:
    spec = {"measure": variant.measure, "overrides": variant.overrides, "settings": setting.params}
    env = dict(os.environ, WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, "-m", "sparsetune.bench.worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(lines[-1])


def device_info() -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = "cpu"
    return info


def print_comparison(title: str, block: dict[str, dict[str, Any]]) -> None:
    """Metrics as rows, variants as columns: ratios stay readable however many metrics there are."""
    from rich.table import Table

    from sparsetune.eval.report import format_value

    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    for vname in block:
        table.add_column(vname, justify="right")
    metrics: list[str] = []
    for values in block.values():
        metrics += [m for m in values if m not in metrics]
    for metric in metrics:
        table.add_row(metric, *(format_value(block[v].get(metric)) for v in block))
    Console().print(table)


def run_benchmark(name: str, quick: bool = False, out: str | None = None, overrides: list[str] | None = None,
                  timeout: int = 1800) -> dict[str, Any]:
    from sparsetune.bench import benchmark_module

    bench: Benchmark = benchmark_module(name).benchmark(quick=quick, overrides=list(overrides or []))
    # one block per setting: blocks.<setting>.variants.<variant>.<metric>, with the setting's parameters
    results: dict[str, Any] = {"benchmark": name, "quick": quick, "device": device_info(), "blocks": {}}
    plan = [(s, bench.variants, bench.baseline, bench.ratio_metrics, bench.extra_ratios) for s in bench.settings]
    plan += [(s, vs, base, metrics, []) for s, vs, base, metrics in bench.extra_blocks]
    for setting, variants, baseline, ratio_metrics, extra_ratios in plan:
        block: dict[str, dict[str, Any]] = {}
        for variant in variants:
            console.print(f"[dim]{setting.name}: running {variant.name}…[/dim]")
            block[variant.name] = _run_variant(variant, setting, timeout)
        for vname, ref in [(v.name, baseline) for v in variants] + list(extra_ratios):
            for metric in ratio_metrics:
                a, b = block.get(vname, {}).get(metric), block.get(ref, {}).get(metric)
                if a is not None and b:
                    block[vname][f"{metric}_vs_{ref}"] = a / b
        results["blocks"][setting.name] = {"settings": setting.params, "baseline": baseline, "variants": block}
        print_comparison(f"{name} — {setting.name} ({', '.join(f'{k}={v}' for k, v in setting.params.items())})",
                         block)
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"results written to {out}")
    return results
