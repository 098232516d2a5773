"""Local prompt/answer files: JSON Lines (one object per line) or a JSON array (LLM-Adapters' format).

Row fields: `data.prompt_field` and `data.answer_field` (either may join several fields with `+`,
e.g. `instruction+input`: the first is required, non-empty parts are joined by a blank line), optional `choices` (list of
strings) with `label` (index of the right one), optional `task`, optional `split`
(train | val | validation | dev | test). If any row has a `split`, the file's own split is used;
otherwise rows are split by `split_seed`. Every malformed row is reported as `FILE:LINE: problem`.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Optional

from sparsetune.data.sources.split import make_splits
from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError, DataError

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def field_names(spec: str) -> list[str]:
    names = [part.strip() for part in str(spec).split("+") if part.strip()]
    if not names:
        raise ConfigError(f"empty field name '{spec}' in data.prompt_field / data.answer_field")
    return names


def _scalar_text(value: Any, name: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")


def _joined(row: dict, names: list[str], where: str) -> Optional[str]:
    """The named fields joined by a blank line; None when the first one is absent (caller decides)."""
    if names[0] not in row:
        return None
    parts = []
    for name in names:
        if name not in row:  # only the first field is required: `instruction+input` without input
            continue
        text = _scalar_text(row[name], name, where).strip()
        if text:
            parts.append(text)
    return "\n\n".join(parts)


def _choices(row: dict, answer: Optional[str], where: str) -> tuple[Optional[list[str]], Optional[int], str]:
    choices, label = row.get("choices"), row.get("label")
    if choices is None:
        if label is not None:
            raise DataError(f"{where}: 'label' given without 'choices'")
        if answer is None:
            raise DataError(f"{where}: missing answer field")
        return None, None, answer
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of at least two strings")
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{where}: 'label' must be an integer index into the {len(choices)} choices")
        if answer is not None and answer.strip() != choices[label].strip():
            raise DataError(f"{where}: answer '{answer}' differs from choices[{label}] '{choices[label]}'")
    else:
        if answer is None:
            raise DataError(f"{where}: missing 'label' (or answer field) for the choices")
        stripped = [c.strip() for c in choices]
        if answer.strip() not in stripped:
            raise DataError(f"{where}: answer '{answer}' is not one of the choices")
        label = stripped.index(answer.strip())
    return list(choices), label, choices[label]


def example_from_row(row: Any, data_cfg: Any, task: str, where: str) -> Example:
    """One row -> Example; `where` ('file:line') prefixes every error."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt_names = field_names(data_cfg.prompt_field)
    prompt = _joined(row, prompt_names, where)
    if prompt is None:
        raise DataError(f"{where}: missing field '{prompt_names[0]}'")
    if not prompt:
        raise DataError(f"{where}: empty prompt")
    answer = _joined(row, field_names(data_cfg.answer_field), where)
    choices, label, answer = _choices(row, answer, where)
    row_task = row.get("task", task)
    if not isinstance(row_task, str) or not row_task:
        raise DataError(f"{where}: field 'task' must be a non-empty string")
    return Example(prompt=prompt, answer=answer, task=row_task, choices=choices, label=label)


def resolve_paths(spec: Optional[str]) -> list[Path]:
    """`path` may list files separated by commas, use glob patterns, or name a folder of *.jsonl."""
    if not spec:
        raise ConfigError("data.path is required for source=jsonl (a .jsonl file, a glob, or a folder)")
    paths: list[Path] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        part = str(Path(part).expanduser())
        if glob.has_magic(part):
            matches = sorted(glob.glob(part))
            if not matches:
                raise DataError(f"data file not found: {part}")
            paths.extend(Path(m) for m in matches)
            continue
        path = Path(part)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.json"))
            if not found:
                raise DataError(f"data file not found: no *.jsonl or *.json in {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"data file not found: {path}")
    return paths


def read_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, row) pairs; `where` is 'file:line' (JSON Lines) or 'file: row N' (JSON array)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        return [(f"{path}: row {i}", row) for i, row in enumerate(rows)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    return out


def load_jsonl(data_cfg: Any) -> Splits:
    by_task: dict[str, list[Example]] = {}
    fixed: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    has_split: Optional[bool] = None
    for path in resolve_paths(data_cfg.path):
        rows = read_rows(path)
        if not rows:
            raise DataError(f"{path}: no rows")
        for where, row in rows:
            ex = example_from_row(row, data_cfg, path.stem, where)
            split = row.get("split")
            if has_split is None:
                has_split = split is not None
            if (split is not None) != has_split:
                raise DataError(f"{where}: some rows have a 'split' field and some do not")
            if split is None:
                by_task.setdefault(ex.task, []).append(ex)
            elif split in SPLIT_NAMES:
                fixed[SPLIT_NAMES[split]].append(ex)
            else:
                raise DataError(f"{where}: unknown split '{split}' (use train, val or test)")
    if not has_split:
        return make_splits(by_task, data_cfg)
    train_by_task: dict[str, list[Example]] = {}
    for ex in fixed["train"]:
        train_by_task.setdefault(ex.task, []).append(ex)
    return make_splits(train_by_task, data_cfg, test=fixed["test"] or None, val=fixed["val"])
