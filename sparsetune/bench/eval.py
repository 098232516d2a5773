"""`sparsetune bench eval`: `sparsetune eval` against the stock `lm_eval` CLI on one offline task.

Variants `lm_eval_cli` (the baseline: `lm_eval --model hf --model_args pretrained=<model folder>
--tasks piqa --include_path <offline redirect>`), `sparsetune` (`sparsetune eval model=...
method=full eval.tasks=[piqa] eval.share_prefix=false`: lm-eval's own HFLM scoring) and
`sparsetune_shared` (the same with eval.share_prefix=true, the default: each context computed once),
each a whole command in its own process, rounds interleaved, on the same model folder (the converted
SmolLM2-135M), task definition, items, batch size and threads:
- `wall_s`: the command's wall time (start-up, model load, scoring): what a user waits for;
  `sparsetune_shared_vs_sparsetune` is what shared-context scoring saves;
- `acc`, `acc_norm`: must be equal (`acc_norm_vs_lm_eval_cli` 1.00×).
`--quick` scores 20 items, else 200; both commands get `trainer.threads` threads (default 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sparsetune.bench.runner import Benchmark, Setting, Variant
from sparsetune.data.benchmarks import full_split_folder
from sparsetune.models.loading import gguf_cache

TASK = "piqa"


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    common = ["model=smollm2_135m", "method=full", "logger=quiet", *overrides]
    variants = [Variant("lm_eval_cli", "sparsetune.bench.eval:measure_lm_eval", common),
                Variant("sparsetune", "sparsetune.bench.eval:measure_sparsetune", [*common, "eval.share_prefix=false"]),
                Variant("sparsetune_shared", "sparsetune.bench.eval:measure_sparsetune",
                        [*common, "eval.share_prefix=true"])]
    limit = 20 if quick else 200
    settings = [Setting(f"{TASK} {limit} items", {"task": TASK, "limit": limit, "batch": 16})]
    return Benchmark(name="eval", variants=variants, settings=settings, baseline="lm_eval_cli",
                     ratio_metrics=["wall_s", "acc_norm"], extra_ratios=[("sparsetune_shared", "sparsetune")])


def _threads(cfg) -> int:
    return int(cfg.trainer.threads or 2)


def _env(threads: int) -> dict[str, str]:
    """Both commands: offline, no W&B, the same intra-op threads (torch reads OMP_NUM_THREADS at start)."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed: {' | '.join(tail)}")
    return wall


def measure_sparsetune(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    task, threads = settings["task"], _threads(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "sparsetune.cli", "eval", f"model={cfg.model.name}", "method=full",
               f"eval.tasks=[{task}]", f"eval.limit={settings['limit']}", f"eval.batch_size={settings['batch']}",
               f"trainer.threads={threads}", f"eval.share_prefix={str(bool(cfg.eval.share_prefix)).lower()}",
               "logger=quiet", f"run_dir={tmp}"]
        wall = _timed(cmd, _env(threads))
        summary = json.loads(next(Path(tmp).glob("*/summary.json")).read_text())
    scores = summary["eval"][task]
    return {"wall_s": wall, "acc": scores["acc"], "acc_norm": scores["acc_norm"], "n": scores.get("n"),
            "threads": threads, "share_prefix": bool(cfg.eval.share_prefix)}


def measure_lm_eval(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    task, threads = settings["task"], _threads(cfg)
    folder = gguf_cache(cfg.model) if cfg.model.source == "gguf_package" else cfg.model.name_or_path
    include = full_split_folder([task])  # the same redirect sparsetune uses; it overrides the stock name
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
               "--tasks", task, "--include_path", str(include), "--limit", str(settings["limit"]),
               "--batch_size", str(settings["batch"]), "--device", "cpu", "--output_path", tmp]
        wall = _timed(cmd, _env(threads))
        results = json.loads(next(Path(tmp).rglob("results_*.json")).read_text())
    scores = results["results"][task]
    return {"wall_s": wall, "acc": scores["acc,none"], "acc_norm": scores["acc_norm,none"],
            "n": results.get("n-samples", {}).get(task, {}).get("effective"), "threads": threads}
