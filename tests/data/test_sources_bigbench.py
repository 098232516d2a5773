"""BIG-bench tasks: parsing a fixture in bigbench's task.json format, caching from an sdist, errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from sparsetune.config.schema import DataConfig
from sparsetune.data import load_splits
from sparsetune.data.sources.bigbench_prepare import is_prepared, prepare_bigbench
from sparsetune.errors import DataError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "data" / "bigbench"


def _cfg(**kw) -> DataConfig:
    base = dict(name="bb", source="bigbench", tasks=["tiny_mc"], test_size=2, val_size=0, split_seed=0)
    base.update(kw)
    return DataConfig(**base)


def _all(splits):
    return splits.train + splits.val + splits.test


def test_multiple_choice_examples_from_fixture():
    splits = load_splits(_cfg(path=str(FIXTURES)))
    examples = _all(splits)
    raw = json.loads((FIXTURES / "tiny_mc" / "task.json").read_text())["examples"]
    assert len(examples) == len(raw) - 1  # the tie example is skipped
    by_input = {ex.prompt.split("\n")[1]: ex for ex in examples}
    for item in raw[:-1]:
        ex = by_input[item["input"].strip()]
        gold = max(item["target_scores"], key=item["target_scores"].get)
        assert ex.answer == gold == ex.choices[ex.label]
        assert sorted(ex.choices) == sorted(item["target_scores"])
        # self-contained prompt: task prefix, bigbench input, every option listed
        assert ex.prompt.startswith("Answer these everyday questions.\n")
        assert all(f"\n- {c}\n" in ex.prompt for c in ex.choices)
        assert ex.task == "tiny_mc"
    yes_no = [ex for ex in examples if len(ex.choices) == 2]
    assert all(ex.choices == ["Yes", "No"] for ex in yes_no)  # two options keep their order


def test_option_order_is_shuffled_per_example_but_fixed():
    one = {ex.prompt: ex for ex in _all(load_splits(_cfg(path=str(FIXTURES))))}
    two = {ex.prompt: ex for ex in _all(load_splits(_cfg(path=str(FIXTURES), split_seed=5)))}
    assert one.keys() == two.keys()
    three_way = [ex for ex in one.values() if len(ex.choices) == 3]
    # in the fixture the right answer is always listed first; after shuffling it is not
    assert {ex.label for ex in three_way} != {0}


def test_generative_subtasks_from_bigbench_folder_layout():
    splits = load_splits(_cfg(path=str(FIXTURES), tasks=["tiny_arith"], test_size=3))
    examples = _all(splits)
    assert len(examples) == 12 and len(splits.test) == 3
    assert all(ex.choices is None and ex.task == "tiny_arith" for ex in examples)
    answers = {ex.prompt: ex.answer for ex in examples}
    assert answers["What is 7 plus 2?"] == "9" and answers["What is 5 minus 1?"] == "4"


def _fake_sdist(tmp_path: Path) -> Path:
    """A tar.gz laid out like the bigbench sdist, holding the fixture tasks and one unrelated file."""
    path = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(FIXTURES.rglob("task.json")):
            rel = file.relative_to(FIXTURES)
            tar.add(file, arcname=f"bigbench-1.0.0/bigbench/benchmark_tasks/{rel}")
        data = b"print('not a task')\n"
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/api/task.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_prepare_from_sdist_then_load_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETUNE_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "data" / "bigbench"
    paths = prepare_bigbench(["tiny_mc", "tiny_arith"], cache, sdist=_fake_sdist(tmp_path), show_progress=False)
    assert paths["tiny_mc"] == cache / "tiny_mc.json" and is_prepared("tiny_arith", cache)
    stored = json.loads((cache / "tiny_arith.json").read_text())
    assert [s["name"] for s in stored["subtasks"]] == ["1_digit_addition", "1_digit_subtraction"]
    # idempotent: nothing is missing, so the (absent) sdist is never opened
    prepare_bigbench(["tiny_mc"], cache, sdist=tmp_path / "absent.tar.gz", show_progress=False)
    from_cache = load_splits(_cfg(tasks=["tiny_mc", "tiny_arith"]))
    from_folder = load_splits(_cfg(tasks=["tiny_mc", "tiny_arith"], path=str(FIXTURES)))
    assert [e.prompt for e in from_cache.train] == [e.prompt for e in from_folder.train]


def test_unknown_task_in_sdist(tmp_path):
    with pytest.raises(DataError, match="no task named nonexistent"):
        prepare_bigbench(["nonexistent"], tmp_path / "c", sdist=_fake_sdist(tmp_path), show_progress=False)


def test_missing_task_is_one_line_that_says_how_to_provide_bigbench(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETUNE_CACHE", str(tmp_path / "empty"))

    def no_download(*args, **kwargs):
        raise AssertionError("a missing BIG-bench task must not start a download")

    monkeypatch.setattr("sparsetune.data.sources.bigbench_prepare.download_sdist", no_download)
    with pytest.raises(DataError, match="--sdist bigbench-1.0.0.tar.gz") as info:
        load_splits(_cfg(tasks=["strategyqa"]))
    assert "strategyqa" in str(info.value) and "\n" not in str(info.value) and "data.path=" in str(info.value)


def test_malformed_task_names_the_example(tmp_path):
    task = {"name": "bad", "examples": [{"input": "ok?", "target_scores": {"a": 1, "b": 0}},
                                        {"input": "", "target_scores": {"a": 1, "b": 0}}]}
    (tmp_path / "bad.json").write_text(json.dumps(task))
    with pytest.raises(DataError, match=r"bad\.json: example 1: 'input' must be a non-empty string"):
        load_splits(_cfg(path=str(tmp_path), tasks=["bad"]))
