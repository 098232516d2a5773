"""Generated sources: synthetic arithmetic and reasoning-gym's GSM-Symbolic."""

from __future__ import annotations

import re

import pytest

from sparsetune.config.schema import DataConfig
from sparsetune.data import load_splits
from sparsetune.errors import ConfigError


def _synthetic(**kw) -> DataConfig:
    base = dict(name="synthetic_arith", source="synthetic", tasks=["arith", "arith_mc"], test_size=20,
                val_size=10, train_size=100, split_seed=0)
    base.update(kw)
    return DataConfig(**base)


def test_synthetic_answers_are_right():
    s = load_splits(_synthetic())
    assert len(s.train) == 100 and len(s.val) == 10 and len(s.test) == 40
    for ex in s.train + s.val + s.test:
        a, op, b = re.match(r"What is (\d+) ([-+*]) (\d+)\?", ex.prompt).groups()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert ex.answer == str(value)
        if ex.task == "arith_mc":
            assert len(ex.choices) == 4 and ex.choices[ex.label] == ex.answer
            assert len(set(ex.choices)) == 4
            assert all(f"- {c}" in ex.prompt for c in ex.choices)
        else:
            assert ex.choices is None and ex.prompt.endswith("?")


def test_synthetic_is_seeded_disjoint_and_test_is_stable():
    one, two = load_splits(_synthetic()), load_splits(_synthetic())
    assert [e.prompt for e in one.train] == [e.prompt for e in two.train]
    questions = [e.prompt.split("\n")[0] for e in one.train + one.val + one.test]
    assert len(questions) == len(set(questions))  # no question in two splits or two tasks
    bigger = load_splits(_synthetic(train_size=300))
    assert [e.prompt for e in bigger.test] == [e.prompt for e in one.test]
    other = load_splits(_synthetic(split_seed=1))
    assert [e.prompt for e in other.test] != [e.prompt for e in one.test]


def test_synthetic_unknown_task():
    with pytest.raises(ConfigError, match="unknown synthetic task 'mul'"):
        load_splits(_synthetic(tasks=["mul"]))


def test_gsm_symbolic_small():
    pytest.importorskip("reasoning_gym")
    cfg = DataConfig(name="gsm_symbolic", source="gsm_symbolic", test_size=8, val_size=4, train_size=16,
                     split_seed=0, tasks=[])
    s = load_splits(cfg)
    assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 8)
    for ex in s.train + s.val + s.test:
        assert ex.task == "gsm_symbolic" and ex.choices is None
        assert re.fullmatch(r"-?\d+(\.\d+)?", ex.answer), ex.answer
        assert "final answer" in ex.prompt
    prompts = [ex.prompt for ex in s.train + s.val + s.test]
    assert len(prompts) == len(set(prompts))
    again = load_splits(cfg)
    assert [e.prompt for e in again.train] == [e.prompt for e in s.train]
    more = load_splits(DataConfig(name="gsm_symbolic", source="gsm_symbolic", test_size=8, train_size=40))
    assert [e.prompt for e in more.test] == [e.prompt for e in s.test]
