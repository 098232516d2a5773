"""lm-eval bridge: score an in-memory model on local Examples or on standard lm-eval tasks.

Both paths wrap the live model in lm-eval's HFLM (no reload, no copy) and leave the caller's state as
it was: lm-eval reseeds python/numpy/torch and switches the model to eval mode, which would silently
change a training run that evaluates every N steps.
"""

from __future__ import annotations

import io
import logging
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from sparsetune.data.types import Example
from sparsetune.errors import ConfigError, UserError

_NOISY_LOGGERS = ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate", "filelock", "fsspec")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextmanager
def preserved_state(model: Any) -> Iterator[None]:
    """Restore python/numpy/torch(/cuda) RNG states and every module's train flag on exit."""
    import numpy as np
    import torch

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for module, training in modes:
            module.training = training


@contextmanager
def quiet() -> Iterator[None]:
    """Silence lm-eval / datasets / transformers logs and progress bars for the duration."""
    import datasets

    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    bars_were_on = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    captured = io.StringIO()  # lm-eval's tqdm bars write to sys.stderr; shown only if something fails
    try:
        with redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars_were_on:
            datasets.utils.logging.enable_progress_bar()


@contextmanager
def lean_evaluator() -> Iterator[None]:
    """Skip lm-eval's result decorations that cost seconds per call and print to the terminal:
    `add_env_info` (torch's collect_env, 1-5 s) and `get_git_commit_hash` (runs git in the CWD)."""
    import lm_eval.evaluator as ev

    saved = ev.add_env_info, ev.get_git_commit_hash
    ev.add_env_info = lambda results: None
    ev.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        ev.add_env_info, ev.get_git_commit_hash = saved


def _model_device(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except StopIteration:
        return "cpu"


def _run(model: Any, tokenizer: Any, tasks: list[str], task_manager: Any, eval_cfg: Any,
         max_length: Optional[int]) -> dict[str, Any]:
    """One lm-eval call on the live model, with the caller's RNG / train flags kept."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from sparsetune.data.text import tokenizer_adds_bos

    with preserved_state(model), quiet(), lean_evaluator():
        # score with BOS exactly when training sequences had it (Llama-2/3 yes, SmolLM2 no)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(eval_cfg.batch_size),
                  device=_model_device(model), max_length=max_length,
                  add_bos_token=tokenizer_adds_bos(tokenizer))
        out = simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=eval_cfg.limit,
                              bootstrap_iters=int(eval_cfg.bootstrap_iters), log_samples=False)
    return out or {}


def _metrics(entry: dict[str, Any]) -> dict[str, float]:
    """{"acc,none": .., "acc_stderr,none": ..} -> {"acc": .., "acc_stderr": ..}; drops "N/A" stderrs."""
    metrics: dict[str, float] = {}
    for key, value in entry.items():
        if "," not in key or isinstance(value, (str, bool)) or value is None:
            continue
        name = key.split(",", 1)[0]
        metrics.setdefault(name, float(value))
    return metrics


def _with_average(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add "average": per-metric mean over the tasks that report it, "score" over primary metrics."""
    if not results:
        return results
    avg: dict[str, float] = {}
    names = sorted({m for r in results.values() for m in r if m != "n" and not m.endswith("_stderr")})
    for name in names:
        vals = [r[name] for r in results.values() if name in r]
        avg[name] = sum(vals) / len(vals)
    primary = [r.get("acc", r.get("exact_match")) for r in results.values()]
    primary = [p for p in primary if p is not None]
    if primary:
        avg["score"] = sum(primary) / len(primary)
    if all("n" in r for r in results.values()):
        avg["n"] = float(sum(r["n"] for r in results.values()))
    return {**results, "average": avg}


def evaluate_text(model: Any, tokenizer: Any, examples: list[Example], eval_cfg: Any, template: str,
                  workdir: Path, max_length: Optional[int] = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}, "average": {...}} for local Examples, scored by lm-eval.

    Multiple-choice tasks report acc / acc_norm, generative ones exact_match after answer extraction
    (see lm_tasks.answer_rule). `max_length` caps prompt + generation tokens (default: the model's).
    """
    from lm_eval.tasks import TaskManager

    from sparsetune.eval.lm_tasks import write_local_tasks

    include, tasks = write_local_tasks(examples, template, Path(workdir), eval_cfg.scoring,
                                       int(eval_cfg.max_new_tokens))
    with quiet():
        manager = TaskManager(include_path=str(include), include_defaults=False)
    out = _run(model, tokenizer, [t.lm_name for t in tasks], manager, eval_cfg, max_length)
    results: dict[str, dict[str, float]] = {}
    for t in tasks:
        metrics = _metrics(out["results"][t.lm_name])
        n = out.get("n-samples", {}).get(t.lm_name, {}).get("effective")
        metrics["n"] = float(n if n is not None else t.size)
        results[t.name] = metrics
    return _with_average(results)


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def _is_network_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        text = f"{type(seen).__name__}: {seen}".lower()
        if isinstance(seen, (ConnectionError, TimeoutError)) or any(
                k in text for k in ("offline", "connection", "resolve", "network", "timed out", "max retries")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@lru_cache(maxsize=1)
def _default_task_manager() -> Any:
    """lm-eval's own task index (scanning its YAMLs takes ~20 s: build it once per process)."""
    from lm_eval.tasks import TaskManager

    with quiet():
        return TaskManager()


def evaluate_lm_tasks(model: Any, tokenizer: Any, task_names: list[str], eval_cfg: Any,
                      max_length: Optional[int] = None) -> dict[str, dict[str, float]]:
    """Standard lm-eval tasks by name (arc_easy, boolq, ...): needs the Hugging Face Hub for the data."""
    import difflib

    hub_msg = (f"eval.tasks={list(task_names)} needs the Hugging Face Hub to download the task data, "
               "and the Hub is unreachable")
    if _offline():
        raise UserError(f"{hub_msg} (offline mode is set); use eval.tasks=[] to score the data set's held-out split")
    manager = _default_task_manager()
    unknown = [n for n in task_names if n not in manager.all_tasks]
    if unknown:
        hints = {n: difflib.get_close_matches(n, manager.all_tasks, n=3) for n in unknown}
        detail = "; ".join(f"'{n}'" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
        raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {detail}")
    try:
        out = _run(model, tokenizer, list(task_names), manager, eval_cfg, max_length)
    except Exception as exc:  # the datasets / hub stack raises many types for "no network"
        if _is_network_error(exc):
            raise UserError(f"{hub_msg} ({type(exc).__name__}); use eval.tasks=[] offline") from exc
        raise
    results = {name: _metrics(entry) for name, entry in out.get("results", {}).items()}
    for name, counts in out.get("n-samples", {}).items():
        if name in results and counts.get("effective") is not None:
            results[name]["n"] = float(counts["effective"])
    return _with_average(results)
