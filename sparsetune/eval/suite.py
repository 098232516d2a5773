"""Evaluate a model on what its config asks: the data set's held-out split, or named lm-eval tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def evaluate_model(cfg, model, tokenizer, splits, split: str = "test", workdir: Path | None = None) -> dict[str, Any]:
    """{task: {metric: value}} on `split` ("test" for final figures, "val" during training)."""
    import tempfile

    part = getattr(splits, split)
    if cfg.eval.tasks:
        from sparsetune.eval.lm import evaluate_lm_tasks

        return evaluate_lm_tasks(model, tokenizer, list(cfg.eval.tasks), cfg.eval)
    if part is None or len(part) == 0:
        return {}
    if splits.kind == "vision":
        from sparsetune.eval.vision import evaluate_vision

        res = evaluate_vision(model, part, cfg.eval.batch_size, splits.num_classes, splits.class_names)
        return {cfg.data.name: res}
    from sparsetune.eval.lm import evaluate_text

    examples = list(part)
    if cfg.eval.limit:
        by_task: dict[str, list] = {}
        for ex in examples:
            by_task.setdefault(ex.task, []).append(ex)
        examples = [ex for exs in by_task.values() for ex in exs[: cfg.eval.limit]]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        return evaluate_text(model, tokenizer, examples, cfg.eval, cfg.data.prompt_template, Path(tmp))
