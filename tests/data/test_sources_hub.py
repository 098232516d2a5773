"""Hub source: rows mapped like local files; offline it fails with one line pointing at offline data."""

from __future__ import annotations

import sys
import types

import pytest

from sparsetune.config.schema import DataConfig
from sparsetune.data import load_splits
from sparsetune.errors import ConfigError, DataError


def _alpaca_cfg(**kw) -> DataConfig:
    base = dict(name="alpaca_hub", source="hub", hub_id="yahma/alpaca-cleaned", prompt_field="instruction+input",
                answer_field="output", test_size=2, val_size=1)
    base.update(kw)
    return DataConfig(**base)


def test_offline_hub_error_is_one_clear_line():
    pytest.importorskip("datasets")
    with pytest.raises(DataError) as info:
        load_splits(_alpaca_cfg())
    text = str(info.value)
    assert "yahma/alpaca-cleaned" in text and "Hugging Face Hub" in text and "data=commonsense_mix" in text
    assert "\n" not in text


def test_rows_are_mapped_with_the_jsonl_field_rules(monkeypatch):
    calls = []
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(10)]

    def load_dataset(hub_id, config=None, split="train"):
        calls.append((hub_id, config, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    splits = load_splits(_alpaca_cfg(hub_split="train[:10]"))
    assert calls == [("yahma/alpaca-cleaned", None, "train[:10]")]
    assert len(splits.test) == 2 and len(splits.val) == 1 and len(splits.train) == 7
    answers = {ex.prompt: ex.answer for ex in splits.train + splits.val + splits.test}
    assert answers == {f"Say {i}.": str(i) for i in range(10)}
    assert all(ex.task == "alpaca_hub" for ex in splits.train)

    rows.append({"instruction": None, "input": "", "output": "x"})
    with pytest.raises(DataError, match=r"yahma/alpaca-cleaned\[train\] row 10: field 'instruction' must be a string"):
        load_splits(_alpaca_cfg())


def test_hub_id_required():
    with pytest.raises(ConfigError, match="hub_id"):
        load_splits(DataConfig(source="hub", hub_id=None))
