"""Local prompt/answer files: JSON Lines (one object per line) or a JSON array (LLM-Adapters' format).

Row fields: `data.prompt_field` and `data.answer_field` (either may join several fields with `+`,
e.g. `instruction+input`: the first is required, non-empty parts are joined by a blank line), optional `choices` (list of
strings) with `label` (index of the right one), optional `task`, optional `split`
(train | val | validation | dev | test). If any row has a `split`, the file's own split is used;
otherwise rows are split by `split_seed`. Every malformed row is reported as `FILE:LINE: problem`.

Files are read in one streaming pass and rows are read again from the file when used (rows.py), so
a file of any size loads in memory bounded by a few integers per row (docs/data.md).
"""

from __future__ import annotations

import glob
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sparsetune.data.rows import LazyExamples, RowFiles
from sparsetune.data.sources.jsonl_scan import scan_rows
from sparsetune.data.sources.row_split import prompt_key, split_rows
from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError, DataError

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}
PART_CODES = {"train": 0, "val": 1, "test": 2}


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


def _array(values: Any, dtype: Any) -> np.ndarray:
    return np.frombuffer(values, dtype=dtype).copy() if len(values) else np.empty(0, dtype)


@dataclass(frozen=True)
class RowParser:
    """Turns a row read again from its file into an Example (what `LazyExamples` calls): the
    fields of `data_cfg` that `example_from_row` reads, kept as plain strings so it pickles."""

    prompt_field: str
    answer_field: str

    def __call__(self, row: Any, path: Path, where: str) -> Example:
        return example_from_row(row, self, path.stem, where)


def load_jsonl(data_cfg: Any) -> Splits:
    """One streaming pass checks every row and records where it lies, its task, its split and a
    digest of its prompt; the parts are arrays of row numbers (row_split.py: the rules of split.py)
    whose Examples are read from the file when used. Memory grows by about 40 bytes per row."""
    parse = RowParser(str(data_cfg.prompt_field), str(data_cfg.answer_field))
    paths = resolve_paths(data_cfg.path)
    file_of, start, length = array("i"), array("q"), array("q")
    task_of, split_of, keys = array("i"), array("b"), bytearray()
    tasks: dict[str, int] = {}
    stats: list[tuple[int, int]] = []
    has_split: Optional[bool] = None
    for f, path in enumerate(paths):
        st = path.stat()
        stats.append((st.st_size, st.st_mtime_ns))
        before = len(start)
        for where, offset, size, row in scan_rows(path):
            ex = example_from_row(row, parse, path.stem, where)
            split = row.get("split")
            if has_split is None:
                has_split = split is not None
            if (split is not None) != has_split:
                raise DataError(f"{where}: some rows have a 'split' field and some do not")
            if split is not None and (not isinstance(split, str) or split not in SPLIT_NAMES):
                raise DataError(f"{where}: unknown split '{split}' (use train, val or test)")
            file_of.append(f)
            start.append(offset)
            length.append(size)
            task_of.append(tasks.setdefault(ex.task, len(tasks)))
            split_of.append(-1 if split is None else PART_CODES[SPLIT_NAMES[split]])
            keys += prompt_key(ex.prompt)
        if len(start) == before:
            raise DataError(f"{path}: no rows")
    files = RowFiles(paths, stats, _array(file_of, np.int32), _array(start, np.int64), _array(length, np.int64), parse)
    task, key, part = _array(task_of, np.int32), _array(keys, "<u8"), _array(split_of, np.int8)
    del file_of, start, length, task_of, split_of, keys
    names = list(tasks)
    if not has_split:
        train, val, test = split_rows(np.arange(len(task)), task, key, names, data_cfg)
    else:
        given_test = np.flatnonzero(part == PART_CODES["test"])
        train, val, test = split_rows(np.flatnonzero(part == PART_CODES["train"]), task, key, names, data_cfg,
                                      test=given_test if len(given_test) else None,
                                      val=np.flatnonzero(part == PART_CODES["val"]))
    return Splits(kind="text", train=LazyExamples(files, train), val=LazyExamples(files, val),
                  test=LazyExamples(files, test))
