"""Run a benchmark's variants in separate processes, in alternating rounds, and print side-by-side ratios.

Variants run round-robin (A B C, A B C, …), each measurement in its own process, so slow drift of the
machine (thermal state, other load, page cache) hits every variant alike. Each ratio is computed per
round (variant / baseline measured in the same round); the report gives the median ratio across rounds
and its spread (min–max), and each variant's metrics are the per-metric medians across rounds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from sparsetune.bench.registry import build_benchmark
from sparsetune.engine.logging import build_logger, log_results_table
from sparsetune.errors import UserError
from sparsetune.eval.report import format_value
from sparsetune.jobs.config import compose_job
from sparsetune.paths import runs_root

console = Console(stderr=True)

DEFAULT_ROUNDS = 3


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


RunVariant = Callable[[Variant, Setting, int], dict[str, Any]]


def _run_variant(variant: Variant, setting: Setting, timeout: int) -> dict[str, Any]:
    """One measurement of one variant in a fresh process; {"error": last line} when it fails."""
    spec = {"measure": variant.measure, "overrides": variant.overrides, "settings": setting.params}
    env = dict(os.environ, WANDB_MODE="disabled")
    try:
        proc = subprocess.run([sys.executable, "-m", "sparsetune.bench.worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(lines[-1])


def device_info() -> dict[str, Any]:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = "cpu"
    return info


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def median_metrics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over the rounds that succeeded; non-numeric values from the first such round.

    A variant that failed in every round keeps the first error; one that failed in some rounds lists
    those rounds' errors under `errors` (its medians use only the rounds that succeeded).
    """
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return {"error": rounds[0]["error"] if rounds else "not run"}
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in ok for k in r):
        values = [r[key] for r in ok if key in r]
        if all(_is_number(v) for v in values):
            med = statistics.median(values)
            # counts (params, hidden size) stay ints when every round agrees
            out[key] = values[0] if all(v == values[0] for v in values) else med
        else:
            out[key] = values[0]
    errors = [r["error"] for r in rounds if "error" in r]
    if errors:
        out["errors"] = errors
    return out


def ratio_stats(rounds_a: list[dict[str, Any]], rounds_b: list[dict[str, Any]], metric: str
                ) -> tuple[float, list[float], list[float | None]] | None:
    """Ratio a/b computed round by round (same round only): (median, [min, max], per-round ratios)."""
    per_round: list[float | None] = []
    for a_run, b_run in zip(rounds_a, rounds_b):
        a, b = a_run.get(metric), b_run.get(metric)
        per_round.append(a / b if _is_number(a) and _is_number(b) and b else None)
    valid = [r for r in per_round if r is not None]
    if not valid:
        return None
    return statistics.median(valid), [min(valid), max(valid)], per_round


def format_ratio(median: float, spread: list[float] | None) -> str:
    """`0.66× (0.62–0.70)`; the spread is left out when it is a single value."""
    text = f"{median:.2f}×"
    if spread and f"{spread[0]:.2f}" != f"{spread[1]:.2f}":
        text += f" ({spread[0]:.2f}–{spread[1]:.2f})"
    return text


def print_comparison(title: str, block: dict[str, dict[str, Any]]) -> None:
    """Metrics as rows, variants as columns: ratios stay readable however many metrics there are."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold", no_wrap=True)  # ratio rows are named in full
    for vname in block:
        table.add_column(vname, justify="right", overflow="fold")
    metrics: list[str] = []
    for values in block.values():
        metrics += [m for m in values if m not in metrics and m not in ("rounds", "errors")
                    and not m.endswith("_range")]

    def cell(values: dict[str, Any], metric: str) -> str:
        value = values.get(metric)
        if f"{metric}_range" in values and _is_number(value):
            return format_ratio(value, values[f"{metric}_range"])
        return format_value(value)

    for metric in metrics:
        table.add_row(metric, *(cell(block[v], metric) for v in block))
    out = Console()
    # piped or logged output is not cut to 80 columns (a table never grows wider than it needs)
    (out if out.is_terminal else Console(width=200)).print(table)


def run_block(setting: Setting, variants: list[Variant], baseline: str, ratio_metrics: list[str],
              extra_ratios: list[tuple[str, str]], rounds: int, timeout: int,
              run_variant: RunVariant | None = None) -> dict[str, dict[str, Any]]:
    """All variants of one setting, round-robin; variants.<name> holds medians, ratios and raw rounds."""
    run_variant = run_variant or _run_variant
    raw: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for variant in variants:
            console.print(f"[dim]{setting.name}: round {r + 1}/{rounds}: running {variant.name}…[/dim]")
            raw[variant.name].append(run_variant(variant, setting, timeout))
    block = {name: median_metrics(runs) for name, runs in raw.items()}
    for vname, ref in [(v.name, baseline) for v in variants] + list(extra_ratios):
        if vname not in raw or ref not in raw:
            continue
        for metric in ratio_metrics:
            stats = ratio_stats(raw[vname], raw[ref], metric)
            if stats is not None and "error" not in block[vname]:
                block[vname][f"{metric}_vs_{ref}"] = stats[0]
                block[vname][f"{metric}_vs_{ref}_range"] = stats[1]
    for name, runs in raw.items():
        block[name]["rounds"] = runs
    return block


def only_variants(bench: Benchmark, names: list[str]) -> Benchmark:
    """The benchmark restricted to `names` plus its baseline (ratios need it); extra ratios between
    variants left out are dropped. An unknown name is one line listing the known ones."""
    known = [v.name for v in bench.variants]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--variants: {', '.join(unknown)} not in benchmark {bench.name} ({', '.join(known)})")
    keep = {*names, bench.baseline}
    return dataclasses.replace(
        bench, variants=[v for v in bench.variants if v.name in keep],
        extra_ratios=[(a, b) for a, b in bench.extra_ratios if a in keep and b in keep],
        extra_blocks=[(s, [v for v in vs if v.name in keep], base, metrics)
                      for s, vs, base, metrics in bench.extra_blocks if base in keep])


def run_benchmark(name: str, quick: bool = False, out: str | None = None, overrides: list[str] | None = None,
                  timeout: int = 1800, rounds: int | None = None,
                  run_variant: RunVariant | None = None, variants: list[str] | None = None) -> dict[str, Any]:
    rounds = DEFAULT_ROUNDS if rounds is None else rounds
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    bench: Benchmark = build_benchmark(name, quick=quick, overrides=list(overrides or []))
    if variants:
        bench = only_variants(bench, variants)
    # one block per setting: blocks.<setting>.variants.<variant>.<metric>, with the setting's parameters
    results: dict[str, Any] = {"benchmark": name, "quick": quick, "n_rounds": rounds, "device": device_info(),
                               "blocks": {}}
    plan = [(s, bench.variants, bench.baseline, bench.ratio_metrics, bench.extra_ratios) for s in bench.settings]
    plan += [(s, vs, base, metrics, []) for s, vs, base, metrics in bench.extra_blocks]
    for setting, variants, baseline, ratio_metrics, extra_ratios in plan:
        block = run_block(setting, variants, baseline, ratio_metrics, extra_ratios, rounds, timeout, run_variant)
        results["blocks"][setting.name] = {"settings": setting.params, "baseline": baseline, "variants": block}
        params = ", ".join(f"{k}={v}" for k, v in setting.params.items())
        print_comparison(f"{name} — {setting.name} ({params}); median of {rounds} round(s), ratio (min–max)",
                         block)
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"results written to {out}")
    log_to_wandb(results, list(overrides or []))
    return results


def bench_tables(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{block: {variant: {metric: value}}}: medians and ratios, each ratio's spread as `_min`/`_max`."""
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for block_name, block in results["blocks"].items():
        rows = tables.setdefault(block_name, {})
        for vname, values in block["variants"].items():
            row = {k: v for k, v in values.items() if k not in ("rounds", "errors") and not k.endswith("_range")
                   and (_is_number(v) or isinstance(v, str))}
            for key, spread in values.items():
                if key.endswith("_range") and spread:
                    row[f"{key[:-6]}_min"], row[f"{key[:-6]}_max"] = spread
            rows[vname] = row
    return tables


def log_to_wandb(results: dict[str, Any], overrides: list[str]) -> None:
    """One W&B run per bench invocation (job_type bench, under `<runs root>/bench/wandb`): each block
    as a table `bench/<block>` (one row per variant) and in the summary; skipped when W&B is off."""
    if os.environ.get("WANDB_MODE") == "disabled":
        return

    # only the logging keys: the rest are the variants' (method.r=8 may not fit the default method)
    cfg = compose_job([o for o in overrides if o.lstrip("+~").startswith(("logger.", "logger=", "run_dir="))])
    if "wandb" not in cfg.logger.backends or (os.environ.get("WANDB_MODE") or cfg.logger.wandb_mode) == "disabled":
        return
    name = results["benchmark"]
    folder = runs_root(cfg.run_dir) / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    lcfg = OmegaConf.merge(cfg.logger, {"backends": ["wandb"], "group": cfg.logger.group or f"bench-{name}"})
    config = {k: results[k] for k in ("benchmark", "quick", "n_rounds", "device")} | {"overrides": overrides}
    logger = build_logger(lcfg, folder, config, f"bench-{name}-{time.strftime('%Y%m%d-%H%M%S')}", job="bench")
    try:
        tables = bench_tables(results)
        for block_name, rows in tables.items():
            log_results_table(logger, f"bench/{block_name}", rows, index="variant")
        logger.summary({"bench": tables})
    finally:
        logger.close()
