"""Turn local Examples into lm-eval task folders (jsonl data + one YAML per task).

lm-eval then scores them exactly like its own tasks: multiple-choice items by answer log-likelihood
(acc / acc_norm), generative items by greedy generation, a regex that extracts the answer and
exact_match against the gold answer (the way the S2FT / PAT papers score generative answers).
With few-shot on, each task also gets a `train` split (the data set's training items of that task)
that lm-eval draws the shots from (`fewshot_split: train`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparsetune.data.prompts import format_prompt
from sparsetune.data.types import Example
from sparsetune.errors import ConfigError, DataError

SCORING_MODES = ("auto", "multiple_choice", "generate")
# a number with optional sign, thousands separators and decimals ("-1,234.5")
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
# generation stops here (lm-eval adds the tokenizer's EOS itself)
STOP_SEQUENCES = ["\n### ", "\nBelow is an instruction"]
FALLBACK = "[invalid]"
MAX_LABELS = 12


@dataclass
class AnswerRule:
    """How the answer is pulled out of a generation before exact_match."""

    kind: str  # number | label | text
    pattern: str
    group_select: int = 0
    ignore: list[str] = field(default_factory=list)  # regexes removed from prediction and reference


@dataclass
class LocalTask:
    """One generated lm-eval task and the local task name it stands for."""

    name: str  # the Example.task value
    lm_name: str  # the lm-eval task name (sanitised, unique)
    scoring: str  # multiple_choice | generate
    size: int
    rule: AnswerRule | None = None


def answer_rule(answers: list[str]) -> AnswerRule:
    """Pick the extraction rule from the gold answers of one task.

    - all numbers: the LAST number in the output (arithmetic / GSM answers end with it);
    - a small closed set of one-word labels (true/false, yes/no, A-D, option1, ...): the FIRST of
      those labels that appears in the output (LLM-Adapters' extractor, used by S2FT and PAT);
    - anything else: the first non-empty line of the output, trailing full stop dropped.
    """
    stripped = [a.strip() for a in answers]
    if stripped and all(re.fullmatch(NUMBER, a) for a in stripped):
        return AnswerRule("number", f"({NUMBER})", group_select=-1, ignore=[",", r"\.0+$"])
    labels = sorted(set(stripped), key=lambda s: (-len(s), s))
    if stripped and len(labels) <= MAX_LABELS and all(re.fullmatch(r"\w[\w'-]*", a) for a in labels):
        # option letters must stay case-sensitive, or the article "a" would read as option A
        flags = "" if all(re.fullmatch(r"[A-Z]", a) for a in labels) else "(?i)"
        alternatives = "|".join(re.escape(a) for a in labels)
        return AnswerRule("label", rf"{flags}\b({alternatives})\b", group_select=0)
    return AnswerRule("text", r"(?m)^\s*(\S[^\n]*?)\s*$", group_select=0, ignore=[r"\.$"])


def extract_answer(output: str, rule: AnswerRule) -> str:
    """What lm-eval's regex filter returns for `output` (for tests and debugging)."""
    found = re.findall(rule.pattern, output)
    if not found:
        return FALLBACK
    match = found[rule.group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), FALLBACK)
    return match.strip()


def scoring_for(task: str, examples: list[Example], scoring: str) -> str:
    """multiple_choice or generate for one task, given eval.scoring."""
    if scoring not in SCORING_MODES:
        raise ConfigError(f"eval.scoring='{scoring}' is not one of: {', '.join(SCORING_MODES)}")
    has_choices = all(ex.choices for ex in examples)
    if scoring == "generate":
        return "generate"
    if scoring == "multiple_choice" and not has_choices:
        raise DataError(f"eval.scoring=multiple_choice but task '{task}' has items without choices")
    return "multiple_choice" if has_choices else "generate"


def _gold_label(ex: Example) -> int:
    assert ex.choices is not None
    if ex.label is not None:
        if not 0 <= ex.label < len(ex.choices):
            raise DataError(f"task '{ex.task}': label {ex.label} out of range for {len(ex.choices)} choices")
        return int(ex.label)
    if ex.answer in ex.choices:
        return ex.choices.index(ex.answer)
    raise DataError(f"task '{ex.task}': answer {ex.answer!r} is not one of its choices and no label is set")


def _lm_name(task: str, taken: set[str]) -> str:
    base = "sparsetune_" + (re.sub(r"[^A-Za-z0-9_]+", "_", task).strip("_") or "task")
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _write_jsonl(rows: list[dict[str, Any]], folder: Path, stem: str) -> Path:
    """Content-addressed file name, so the datasets cache never serves stale rows."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = (folder / f"{stem}-{digest}.jsonl").resolve()
    if not path.exists():
        path.write_text(text, encoding="utf-8")
    return path


def _task_yaml(lm_name: str, data_file: Path, cache: Path, scoring: str, rule: AnswerRule | None,
               max_new_tokens: int, shots_file: Path | None = None, num_fewshot: int = 0) -> dict[str, Any]:
    # absolute paths: lm-eval resolves relative data_files against the current directory
    files = {"test": str(data_file)}
    if shots_file is not None:
        files["train"] = str(shots_file)
    cfg: dict[str, Any] = {
        "task": lm_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files, "cache_dir": str(cache)},
        "test_split": "test",
        "doc_to_text": "query",  # a field name: used verbatim, no Jinja rendering
        "num_fewshot": int(num_fewshot),
        "metadata": {"version": 1.0},
    }
    if shots_file is not None:
        cfg["fewshot_split"] = "train"
    if scoring == "multiple_choice":
        cfg.update({
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            # training sees prompt + answer with nothing in between; score the same continuation
            "target_delimiter": "",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        })
        return cfg
    assert rule is not None
    cfg.update({
        "output_type": "generate_until",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "generation_kwargs": {
            "until": list(STOP_SEQUENCES),
            "max_gen_toks": int(max_new_tokens),
            "do_sample": False,
            "temperature": 0.0,
        },
        "filter_list": [{
            "name": "extract",
            "filter": [
                {"function": "regex", "regex_pattern": rule.pattern, "group_select": rule.group_select,
                 "fallback": FALLBACK},
                {"function": "take_first"},
            ],
        }],
        "metric_list": [{
            "metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
            "ignore_case": True, "ignore_punctuation": False, "regexes_to_ignore": list(rule.ignore),
        }],
    })
    return cfg


def _rows(items: list[Example], mode: str, template: str, tokenizer: Any) -> list[dict[str, Any]]:
    if mode == "multiple_choice":
        return [{"query": format_prompt(ex.prompt, template, tokenizer), "choices": list(ex.choices or []),
                 "label": _gold_label(ex)} for ex in items]
    return [{"query": format_prompt(ex.prompt, template, tokenizer), "answer": ex.answer.strip()} for ex in items]


def write_local_tasks(examples: list[Example], template: str, workdir: Path, scoring: str = "auto",
                      max_new_tokens: int = 16, tokenizer: Any = None, num_fewshot: int = 0,
                      fewshot_examples: list[Example] | None = None) -> tuple[Path, list[LocalTask]]:
    """Write data + YAMLs for each Example.task under workdir/tasks; returns (include_path, tasks).

    `tokenizer` is needed for template `chat`. With `num_fewshot` > 0 each task draws its shots
    from the `fewshot_examples` (the training split) of the same task.
    """
    if not examples:
        raise DataError("no evaluation examples")
    shots_by_task: dict[str, list[Example]] = {}
    for ex in (fewshot_examples or []) if num_fewshot else []:
        shots_by_task.setdefault(ex.task, []).append(ex)
    folder = (Path(workdir) / "tasks").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):  # a reused workdir must not index tasks of an earlier call
        old.unlink()
    cache = (Path(workdir) / "datasets_cache").resolve()
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    taken: set[str] = set()
    tasks: list[LocalTask] = []
    for task, items in by_task.items():
        lm_name = _lm_name(task, taken)
        mode = scoring_for(task, items, scoring)
        rule = None if mode == "multiple_choice" else answer_rule([ex.answer for ex in items])
        data_file = _write_jsonl(_rows(items, mode, template, tokenizer), folder, lm_name)
        shots_file = None
        if num_fewshot:
            shots = [ex for ex in shots_by_task.get(task, []) if mode == "generate" or ex.choices]
            if len(shots) < num_fewshot:
                raise DataError(f"eval.num_fewshot={num_fewshot} but task '{task}' has {len(shots)} "
                                "training item(s) to draw shots from")
            shots_file = _write_jsonl(_rows(shots, mode, template, tokenizer), folder, f"{lm_name}-train")
        spec = _task_yaml(lm_name, data_file, cache, mode, rule, max_new_tokens, shots_file, num_fewshot)
        (folder / f"{lm_name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        tasks.append(LocalTask(task, lm_name, mode, len(items), rule))
    return folder, tasks
