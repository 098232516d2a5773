"""Split rules: deterministic in split_seed, disjoint, sized as configured, test fixed by train size."""

from __future__ import annotations

import pytest

from sparsetune.config.schema import DataConfig
from sparsetune.data.sources.split import make_splits
from sparsetune.data.types import Example
from sparsetune.errors import DataError


def _data(n_a: int = 60, n_b: int = 40) -> dict[str, list[Example]]:
    a = [Example(prompt=f"a{i}", answer="x", task="a") for i in range(n_a)]
    b = [Example(prompt=f"b{i}", answer="y", task="b") for i in range(n_b)]
    a.append(Example(prompt="a3", answer="duplicate", task="a"))  # repeated prompt: dropped
    return {"a": a, "b": b}


def _prompts(items) -> list[str]:
    return [ex.prompt for ex in items]


def test_sizes_and_disjointness():
    s = make_splits(_data(), DataConfig(test_size=10, val_size=7, train_size=50, split_seed=3))
    assert len(s.test) == 20 and len(s.val) == 7 and len(s.train) == 50
    assert sum(ex.task == "a" for ex in s.test) == 10
    parts = [set(_prompts(p)) for p in (s.train, s.val, s.test)]
    assert sum(len(p) for p in parts) == len(set().union(*parts))  # no prompt in two parts
    assert all(ex.answer != "duplicate" for ex in s.train + s.val + s.test)


def test_deterministic_in_seed():
    cfg = DataConfig(test_size=10, val_size=5, split_seed=1)
    one, two = make_splits(_data(), cfg), make_splits(_data(), cfg)
    for p, q in ((one.train, two.train), (one.val, two.val), (one.test, two.test)):
        assert _prompts(p) == _prompts(q)
    other = make_splits(_data(), DataConfig(test_size=10, val_size=5, split_seed=2))
    assert set(_prompts(other.test)) != set(_prompts(one.test))


def test_test_part_does_not_move_with_train_or_val_size():
    small = make_splits(_data(), DataConfig(test_size=10, val_size=0, train_size=5))
    large = make_splits(_data(), DataConfig(test_size=10, val_size=9, train_size=None))
    assert _prompts(small.test) == _prompts(large.test)
    assert len(large.train) == 100 - 20 - 9


def test_small_task_holds_out_at_most_half():
    s = make_splits({"tiny": [Example(prompt=str(i), answer="a", task="tiny") for i in range(9)]},
                    DataConfig(test_size=200))
    assert len(s.test) == 4 and len(s.train) == 5


def test_given_test_part_is_removed_from_training():
    data = _data()
    test = [Example(prompt="a1", answer="x", task="a")]
    s = make_splits(data, DataConfig(test_size=0), test=test)
    assert "a1" not in _prompts(s.train) and _prompts(s.test) == ["a1"]


def test_val_size_too_large():
    with pytest.raises(DataError, match="val_size"):
        make_splits(_data(4, 4), DataConfig(test_size=1, val_size=50))
