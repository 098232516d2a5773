"""`sparsetune bench precision`: fp32 against bf16 autocast, for a training step and for lm-eval scoring.

Decides whether `trainer.precision=bf16 eval.precision=bf16` pays on this machine: GPUs and CPUs with
AVX512-BF16 or AMX have native bf16 matmuls, other CPUs may run bf16 slower than fp32.
Two blocks, each variant in its own process, rounds interleaved:
- `train step 8x128`: forward + backward + optimiser step of the configured method (default full
  fine-tuning) on SmolLM2-135M, `step_time_s` (weights and optimiser state stay fp32 under autocast);
- `score piqa N`: `sparsetune eval`'s scoring of N PIQA items (shared contexts), `score_s`, and `acc` /
  `acc_norm`: bf16 rounding may flip an item whose choices are nearly tied, never many.
`--quick`: the tiny Llama, 20 items.
"""

from __future__ import annotations

import time
from typing import Any

from sparsetune.bench.runner import Benchmark, Setting, Variant
from sparsetune.bench.worker import worker_setup
from sparsetune.eval.lm import evaluate_lm_tasks
from sparsetune.models import load_model

STEP = "sparsetune.bench.training_step:measure_train_step"
SCORE = "sparsetune.bench.precision:measure_scoring"
TASK = "piqa"
PRECISIONS = {"fp32": ["trainer.precision=fp32", "eval.precision=fp32"],
              "bf16": ["trainer.precision=bf16", "eval.precision=bf16"]}


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    model = ["model=tiny_llama"] if quick else []
    common = [*model, "method=full", "logger=quiet", *overrides]

    def variants(measure: str) -> list[Variant]:
        return [Variant(name, measure, [*common, *extra]) for name, extra in PRECISIONS.items()]

    limit = 20 if quick else 200
    step = Setting("train step 4x128" if quick else "train step 8x128",
                   {"batch": 4 if quick else 8, "seq": 128, "warmup": 1 if quick else 2, "steps": 3 if quick else 5})
    score = Setting(f"score {TASK} {limit} items", {"task": TASK, "limit": limit, "batch": 16})
    return Benchmark(name="precision", variants=variants(STEP), settings=[step], baseline="fp32",
                     ratio_metrics=["step_time_s", "peak_memory_mb"],
                     extra_blocks=[(score, variants(SCORE), "fp32", ["score_s", "acc", "acc_norm"])])


def measure_scoring(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    """One in-process scoring of the task's first `limit` items, after a warm-up on two of them."""
    worker_setup(cfg, settings)
    model, tokenizer = load_model(cfg.model)
    model.eval()
    cfg.eval.batch_size = settings["batch"]
    cfg.eval.limit = 2
    evaluate_lm_tasks(model, tokenizer, [settings["task"]], cfg.eval)
    cfg.eval.limit = settings["limit"]
    start = time.perf_counter()
    scores = evaluate_lm_tasks(model, tokenizer, [settings["task"]], cfg.eval)[settings["task"]]
    return {"score_s": time.perf_counter() - start, "acc": scores["acc"], "acc_norm": scores["acc_norm"],
            "n": scores.get("n"), "precision": cfg.eval.precision}
