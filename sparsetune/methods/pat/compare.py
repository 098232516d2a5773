"""Figures that put a pruned export next to an unpruned baseline: size on disk and the baseline run's results.

The paper's comparison is a separate LoRA run without pruning (e.g. `sparsetune train recipe=lora_llama`).
A prune job names that run folder with `method.baseline_run=RUN_DIR`; its held-out eval and parameter
counts are read once at start (a bad path fails before any training) and recorded as `baseline` in the
prune run's summary.json, so both accuracies sit in one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsetune.errors import ConfigError

_MB = 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def folder_size_mb(path: Path) -> float:
    """Everything under `path` (weights, config, tokenizer), in MB."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / _MB


def weights_size_mb(path: Path) -> float:
    """The weight files under `path` only, in MB."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)) / _MB


def export_figures(path: Path) -> dict[str, float]:
    return {"export_size_mb": round(folder_size_mb(path), 3), "export_weights_mb": round(weights_size_mb(path), 3)}


def load_baseline(run_dir: str) -> dict[str, Any]:
    """The parts of a finished run's summary.json that a pruned run is compared with."""
    path = Path(run_dir).expanduser()
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"method.baseline_run: no summary.json in {path} (train one first, e.g. "
                          "`sparsetune train recipe=lora_llama`, and pass its run folder)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"method.baseline_run: cannot read {summary_path}: {exc}") from None
    if not summary.get("eval"):
        raise ConfigError(f"method.baseline_run: {summary_path} has no eval results (run `sparsetune eval "
                          f"run={path}` first)")
    keys = ("method", "model", "data", "steps", "total_params", "trainable_params", "params_after", "export_size_mb")
    return {"run": str(path.resolve()), **{k: summary[k] for k in keys if k in summary}, "eval": summary["eval"]}


def baseline_tables(baseline: dict[str, Any] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """The baseline's held-out results as a table, for the job to print before this run's own."""
    if not baseline:
        return {}
    name = f"{baseline.get('method', '?')}, {Path(baseline['run']).name}"
    return {f"baseline eval (unpruned: {name})": baseline["eval"]}
