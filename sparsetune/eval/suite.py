"""Evaluate a model on what its config asks: the data set's held-out split and/or lm-eval tasks.

`eval.tasks` lists what to score; the reserved name `heldout` (also what an empty list means) is
the data set's held-out split ("test" for final figures, "val" during training), every other name
an lm-eval task (from eval.include_path, or a standard one). With eval.log_samples the lm-eval
results and per-sample records go to `<run>/eval/<split>/`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sparsetune.errors import ConfigError
from sparsetune.eval.lm import (
    evaluate_benchmark_rows,
    evaluate_lm_tasks,
    evaluate_text,
    expand_suites,
    resolve_lm_tasks,
    with_average,
)
from sparsetune.eval.vision import evaluate_vision

HELDOUT = "heldout"


def eval_tasks(eval_cfg) -> tuple[bool, list[str]]:
    """(score the held-out split?, lm-eval task names) from eval.tasks."""
    names = list(dict.fromkeys(str(n) for n in (eval_cfg.tasks or [HELDOUT])))
    return HELDOUT in names, [n for n in names if n != HELDOUT]


def check_eval_tasks(cfg) -> None:
    """Fail now, not after training, on lm-eval tasks that cannot run (unknown, or Hub while offline)."""
    if not cfg.eval.enabled:
        return
    _, names = eval_tasks(cfg.eval)
    if not names:
        return

    names = expand_suites(names)
    if cfg.model.task != "causal_lm":
        raise ConfigError(f"eval.tasks={names}: lm-eval tasks need a causal LM; this model is {cfg.model.task}")
    resolve_lm_tasks(names, cfg.eval)


def _output_dir(cfg, split: str, workdir: Path | None) -> Path | None:
    if not getattr(cfg.eval, "log_samples", False) or workdir is None:
        return None
    out = Path(workdir) / "eval" / split
    if out.is_dir():  # the latest evaluation of this split wins (training re-evaluates "val")
        for old in [out / "results.json", *out.glob("samples_*.jsonl")]:
            old.unlink(missing_ok=True)
    return out


def _heldout(cfg, model, tokenizer, splits, split: str, workdir: Path | None, out_dir: Path | None) -> dict[str, Any]:
    part = getattr(splits, split)
    if part is None or len(part) == 0:
        return {}
    if splits.kind == "vision":
        res = evaluate_vision(model, part, cfg.eval.batch_size, splits.num_classes, splits.class_names)
        return {cfg.data.name: res}

    examples = list(part)
    if cfg.eval.limit:
        by_task: dict[str, list] = {}
        for ex in examples:
            by_task.setdefault(ex.task, []).append(ex)
        examples = [ex for exs in by_task.values() for ex in exs[: cfg.eval.limit]]
    shots = list(splits.train or []) if getattr(cfg.eval, "num_fewshot", None) else None
    if all(ex.row is not None for ex in examples):  # benchmark items: lm-eval's own tasks on their rows

        return evaluate_benchmark_rows(model, tokenizer, examples, cfg.eval, fewshot_examples=shots, out_dir=out_dir)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        return evaluate_text(model, tokenizer, examples, cfg.eval, cfg.data.prompt_template, Path(tmp),
                             fewshot_examples=shots, out_dir=out_dir)


def evaluate_model(cfg, model, tokenizer, splits, split: str = "test", workdir: Path | None = None) -> dict[str, Any]:
    """{task: {metric: value}} on `split` ("test" for final figures, "val" during training)."""
    heldout, lm_tasks = eval_tasks(cfg.eval)
    out_dir = _output_dir(cfg, split, workdir)
    results = _heldout(cfg, model, tokenizer, splits, split, workdir, out_dir) if heldout else {}
    if not lm_tasks:
        return results
    if getattr(splits, "kind", "text") == "vision":
        raise ConfigError(f"eval.tasks={lm_tasks}: lm-eval tasks need a language model; "
                          f"a vision run scores only [{HELDOUT}]")

    lm_results = evaluate_lm_tasks(model, tokenizer, lm_tasks, cfg.eval, out_dir=out_dir)
    if not results:
        return lm_results
    merged = {k: v for k, v in results.items() if k != "average"}
    merged.update({k: v for k, v in lm_results.items() if k != "average"})
    return with_average(merged)
