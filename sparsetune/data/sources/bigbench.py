"""BIG-bench JSON tasks as prompt/answer Examples.

Multiple-choice tasks (`target_scores`) become Examples with `choices` and `label`; the prompt keeps
bigbench's input text, adds the task prefix, and lists every option so it stands alone. Options of
tasks with more than two are shuffled per example with a fixed seed (date_understanding, for one,
always lists the right answer first). Tasks scored by exact match (arithmetic) become generative
Examples whose answer is the target string.

BIG-bench is optional (the package index no longer serves bigbench 1.0.0): task files come from the
data cache, which `scripts/prepare_data.py --sdist bigbench-1.0.0.tar.gz` fills (or a download
where an index still serves it), or from `data.path`: a folder of `<task>.json` or bigbench's own
`benchmark_tasks` folder. A missing task is one error line that says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from sparsetune.data.sources.bigbench_prepare import SUBTASKS, bigbench_cache, is_prepared
from sparsetune.data.sources.common import mc_prompt, stable_shuffle, text_seed
from sparsetune.data.sources.split import make_splits
from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GENERATIVE_SCORES = {"exact_str_match", "bleu", "rouge", "bleurt", "sequence_f1"}
DEFAULT_FOOTER = "Answer with one of the options."
FOOTERS = {"winowhy": "Is the reasoning above correct or incorrect?"}
# bigbench's default "Q:" prefix adds nothing once the prompt template frames the question
PLAIN_PREFIXES = {"", "Q:"}


def _question(spec: dict, example: dict, where: str) -> str:
    text = example.get("input")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'input' must be a non-empty string")
    prefix = str(spec.get("example_input_prefix", "")).strip()
    return text.strip() if prefix in PLAIN_PREFIXES else f"{prefix} {text.strip()}"


def _generative(spec: dict, example: dict, task: str, where: str) -> Example:
    target = example.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if not isinstance(target, str) or not target.strip():
        raise DataError(f"{where}: 'target' must be a non-empty string")
    header = str(spec.get("task_prefix", "")).strip()
    question = _question(spec, example, where)
    prompt = f"{header}\n{question}" if header else question
    return Example(prompt=prompt, answer=target.strip(), task=task)


def _multiple_choice(spec: dict, example: dict, task: str, where: str) -> Optional[Example]:
    """None for items without a single best option (bigbench has a few with ties)."""
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        raise DataError(f"{where}: 'target_scores' must map at least two options to scores")
    try:
        best = max(float(v) for v in scores.values())
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'target_scores' values must be numbers") from None
    gold = [k for k, v in scores.items() if float(v) == best]
    choices = [k.strip() for k in scores]
    if len(gold) != 1 or best <= 0 or len(set(choices)) != len(choices):
        return None
    question = _question(spec, example, where)
    if len(choices) > 2:
        choices = stable_shuffle(choices, "choices", text_seed(task + "\n" + question))
    label = choices.index(gold[0].strip())
    prompt = mc_prompt(question, choices, header=str(spec.get("task_prefix", "")),
                       footer=FOOTERS.get(task, DEFAULT_FOOTER))
    return Example(prompt=prompt, answer=choices[label], task=task, choices=choices, label=label)


def examples_from_task(spec: Any, task: str, where: str) -> list[Example]:
    """All usable Examples of a bigbench task object (subtasks included)."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: expected a JSON object (a bigbench task.json)")
    if spec.get("subtasks"):
        out: list[Example] = []
        for sub in spec["subtasks"]:
            name = sub.get("name", "?") if isinstance(sub, dict) else "?"
            out.extend(examples_from_task(sub, task, f"{where} (subtask {name})"))
        return out
    items = spec.get("examples")
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: no 'examples' list")
    generative = spec.get("preferred_score") in GENERATIVE_SCORES
    out, skipped = [], 0
    for i, item in enumerate(items):
        at = f"{where}: example {i}"
        if not isinstance(item, dict):
            raise DataError(f"{at}: expected a JSON object")
        if generative or "target_scores" not in item:
            out.append(_generative(spec, item, task, at))
            continue
        ex = _multiple_choice(spec, item, task, at)
        if ex is None:
            skipped += 1
        else:
            out.append(ex)
    if skipped:
        log.info("%s: skipped %d examples without a single best option", where, skipped)
    return out


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def read_task_folder(folder: Path) -> dict:
    """A task in bigbench's own layout: task.json plus optional `<subtask>/task.json` folders."""
    spec = read_json(folder / "task.json")
    keep = SUBTASKS.get(folder.name)
    subs = sorted(p for p in folder.glob("*/task.json") if keep is None or p.parent.name in keep)
    if subs and isinstance(spec, dict):
        spec["subtasks"] = [read_json(p) for p in subs]
    return spec


def _user_task(root: Path, task: str) -> tuple[Any, Path]:
    if (root / f"{task}.json").is_file():
        return read_json(root / f"{task}.json"), root / f"{task}.json"
    if (root / task / "task.json").is_file():
        return read_task_folder(root / task), root / task / "task.json"
    raise DataError(f"bigbench task not found: neither {root / (task + '.json')} nor {root / task / 'task.json'}")


def _ensure_cached(tasks: list[str], cache: Path) -> None:
    """One line that says how to provide BIG-bench when a task is not prepared: the package index no
    longer serves bigbench 1.0.0, so nothing is downloaded behind the user's back."""
    missing = [t for t in tasks if not is_prepared(t, cache)]
    if missing:
        names = ",".join(missing)
        raise DataError(f"BIG-bench task(s) {names} not in the data cache {cache} (the package index no longer "
                        f"serves bigbench 1.0.0): python scripts/prepare_data.py --tasks {names} --sdist "
                        "bigbench-1.0.0.tar.gz, or data.path=<bigbench checkout>/bigbench/benchmark_tasks")


def load_bigbench(data_cfg: Any) -> Splits:
    tasks = list(data_cfg.tasks or [])
    if not tasks:
        raise ConfigError("data.tasks must name at least one bigbench task for source=bigbench")
    by_task: dict[str, list[Example]] = {}
    if data_cfg.path:
        root = Path(str(data_cfg.path)).expanduser()
        for task in tasks:
            spec, where = _user_task(root, task)
            by_task[task] = examples_from_task(spec, task, str(where))
    else:
        cache = bigbench_cache()
        _ensure_cached(tasks, cache)
        for task in tasks:
            path = cache / f"{task}.json"
            by_task[task] = examples_from_task(read_json(path), task, str(path))
    return make_splits(by_task, data_cfg)
