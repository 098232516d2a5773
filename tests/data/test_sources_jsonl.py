"""Local jsonl / JSON-array files: fields, choices, split column, and errors that name file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetune.config.schema import DataConfig
from sparsetune.data import load_splits
from sparsetune.errors import ConfigError, DataError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "data"


def _cfg(path, **kw) -> DataConfig:
    return DataConfig(name="jsonl", kind="text", source="jsonl", path=str(path), **kw)


def _write(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_fixture_loads_with_tasks_choices_and_split_sizes():
    splits = load_splits(_cfg(FIXTURES / "tiny_qa.jsonl", test_size=2, val_size=3))
    everything = splits.train + splits.val + splits.test
    assert len(everything) == 24
    assert len(splits.test) == 4  # 2 per task: tiny_qa (file stem) and capitals (row field)
    assert {ex.task for ex in splits.test} == {"tiny_qa", "capitals"}
    assert len(splits.val) == 3
    cap = next(ex for ex in everything if ex.prompt == "What is the capital of Japan?")
    assert cap.choices == ["Osaka", "Tokyo", "Kyoto"] and cap.label == 1 and cap.answer == "Tokyo"
    add = next(ex for ex in everything if ex.prompt == "What is 3 + 11?")
    assert add.answer == "14" and add.choices is None


def test_split_column_is_honoured():
    splits = load_splits(_cfg(FIXTURES / "tiny_qa_split.jsonl", test_size=100))
    rows = [json.loads(line) for line in (FIXTURES / "tiny_qa_split.jsonl").read_text().splitlines()]
    want = {s: {r["prompt"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert {ex.prompt for ex in splits.test} == want["test"]
    assert {ex.prompt for ex in splits.val} == want["val"]
    assert {ex.prompt for ex in splits.train} == want["train"]


def test_missing_file():
    with pytest.raises(DataError, match=r"^data file not found: .*nope\.jsonl$"):
        load_splits(_cfg("/no/such/dir/nope.jsonl"))


def test_path_required():
    with pytest.raises(ConfigError, match="data.path"):
        load_splits(DataConfig(source="jsonl", path=None))


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"prompt": "x", "answer": ', "invalid JSON"),
        ({"question": "x", "answer": "y"}, "missing field 'prompt'"),
        ({"prompt": ["x"], "answer": "y"}, "field 'prompt' must be a string, got list"),
        ({"prompt": "x"}, "missing answer field"),
        ({"prompt": "x", "choices": ["a", "b"], "label": 5}, "'label' must be an integer index"),
        ({"prompt": "x", "answer": "c", "choices": ["a", "b"]}, "not one of the choices"),
        ([1, 2], "expected a JSON object, got list"),
        ({"prompt": "x", "answer": "y", "split": "holdout"}, "unknown split 'holdout'"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, bad_row, message):
    good = {"prompt": "fine", "answer": "ok", "split": "train"} if isinstance(bad_row, dict) and "split" in bad_row \
        else {"prompt": "fine", "answer": "ok"}
    path = _write(tmp_path, [good, good, "", bad_row])  # blank line 3 is skipped, line numbers still count
    with pytest.raises(DataError) as info:
        load_splits(_cfg(path))
    text = str(info.value)
    assert text.startswith(f"{path}:4: "), text
    assert message in text
    assert "\n" not in text


def test_json_array_and_joined_fields(tmp_path):
    rows = [{"instruction": f"Add {i} and 1.", "input": "" if i % 2 else "Show the number only.",
             "output": str(i + 1)} for i in range(10)]
    path = tmp_path / "alpaca_like.json"
    path.write_text(json.dumps(rows, indent=1))
    splits = load_splits(_cfg(path, prompt_field="instruction+input", answer_field="output", test_size=2))
    everything = {ex.prompt: ex.answer for ex in splits.train + splits.val + splits.test}
    assert everything["Add 0 and 1.\n\nShow the number only."] == "1"
    assert everything["Add 1 and 1."] == "2"  # empty input adds nothing


def test_glob_and_comma_list(tmp_path):
    a = _write(tmp_path, [{"prompt": f"a{i}", "answer": "x"} for i in range(6)], "a.jsonl")
    _write(tmp_path, [{"prompt": f"b{i}", "answer": "y"} for i in range(6)], "b.jsonl")
    by_glob = load_splits(_cfg(tmp_path / "*.jsonl", test_size=1))
    by_list = load_splits(_cfg(f"{a},{tmp_path / 'b.jsonl'}", test_size=1))
    assert {ex.task for ex in by_glob.test} == {"a", "b"}
    assert [ex.prompt for ex in by_glob.train] == [ex.prompt for ex in by_list.train]
