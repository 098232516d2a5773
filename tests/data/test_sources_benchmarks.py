"""source=benchmarks: the papers' benchmarks from the offline copies, split without leaks and
formatted exactly as lm-eval's stock tasks score them."""

from __future__ import annotations

import hashlib

import pytest

from sparsetune.config.schema import DataConfig
from sparsetune.data import load_splits
from sparsetune.data.benchmarks import SUITES, expand, shipped_rows
from sparsetune.data.sources.benchmarks import normalise
from sparsetune.errors import ConfigError

SMALL = ["arc_easy", "arc_challenge", "openbookqa", "winogrande"]


def _cfg(**kw) -> DataConfig:
    base = dict(name="bench", source="benchmarks", tasks=SMALL, test_size=60, val_size=20, train_size=None,
                prompt_template="none")
    return DataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def splits():
    return load_splits(_cfg())


def _hashes(items) -> dict[str, str]:
    return {hashlib.sha1(normalise(ex.prompt).encode()).hexdigest(): ex.task for ex in items}


def test_no_item_in_two_parts_or_two_tasks(splits):
    train, val, test = _hashes(splits.train), _hashes(splits.val), _hashes(splits.test)
    assert not set(train) & set(test) and not set(val) & set(test) and not set(train) & set(val)
    # per task: exactly test_size held out (arc_challenge has 299 items, so at most half of it)
    counts = {t: sum(ex.task == t for ex in splits.test) for t in SMALL}
    assert counts == {t: 60 for t in SMALL}
    # every held-out item is a distinct shipped row of its task
    rows = {(ex.task, ex.row) for ex in splits.test}
    assert len(rows) == len(splits.test) and all(ex.row is not None for ex in splits.test)
    # normalised text repeated across tasks is never on both sides
    held = {normalise(ex.prompt) for ex in splits.test}
    assert not any(normalise(ex.prompt) in held for ex in splits.train)


def test_split_is_seeded_and_independent_of_the_training_budget(splits):
    again = load_splits(_cfg(train_size=50))
    assert [(e.task, e.row) for e in again.test] == [(e.task, e.row) for e in splits.test]
    assert len(again.train) == 50
    other = load_splits(_cfg(split_seed=1))
    assert {(e.task, e.row) for e in other.test} != {(e.task, e.row) for e in splits.test}


def test_training_items_are_lm_eval_context_plus_gold_continuation(splits):
    # arc_easy's stock prompt, written out here as the independent reference
    rows = shipped_rows("arc_easy")
    ex = next(e for e in splits.train if e.task == "arc_easy")
    row = rows[ex.row]
    gold = row["choices"]["label"].index(row["answerKey"])
    assert ex.prompt == f"Question: {row['question']}\nAnswer:"
    assert ex.answer == " " + row["choices"]["text"][gold]
    assert ex.choices[ex.label] == ex.answer
    # winogrande scores the gold option's partial sentence, continuation = the rest of the sentence
    ex = next(e for e in splits.train if e.task == "winogrande")
    row = shipped_rows("winogrande")[ex.row]
    blank = row["sentence"].index("_")
    option = row["option1"] if row["answer"] == "1" else row["option2"]
    assert ex.prompt == row["sentence"][:blank].strip() + " " + option
    assert ex.answer == " " + row["sentence"][blank + 1:].strip()


def test_boolq_rows_get_lm_eval_columns():
    rows = shipped_rows("boolq")
    assert set(rows.column_names) >= {"passage", "question", "label"}
    assert all(int(a) == lab for a, lab in zip(rows["answer"][:50], rows["label"][:50]))
    splits = load_splits(_cfg(tasks=["boolq"], test_size=10, val_size=0, train_size=20))
    for ex in splits.train:
        row = rows[ex.row]
        assert ex.answer == (" yes" if row["answer"] else " no")
        assert ex.prompt.endswith(f"Question: {row['question']}?\nAnswer:")


def test_generator_trains_on_reasoning_gym_and_holds_out_real_gsm8k():
    splits = load_splits(_cfg(tasks=["gsm8k"], generator="gsm_symbolic", test_size=30, val_size=5, train_size=40))
    assert len(splits.train) == 40 and len(splits.val) == 5 and len(splits.test) == 30
    real = shipped_rows("gsm8k")
    for ex in splits.test:
        assert ex.prompt == f"Question: {real[ex.row]['question']}\nAnswer:"
    ex = splits.train[0]
    assert ex.prompt.startswith("Question: ") and ex.prompt.endswith("\nAnswer:") and ex.row is None
    assert "####" in ex.answer and "Give the result" not in ex.prompt
    held = {normalise(e.prompt) for e in splits.test}
    assert not any(normalise(e.prompt) in held for e in splits.train)


def test_generated_validation_docs_are_the_validation_part_never_trained_on():
    from sparsetune.data.sources.benchmarks import generated_validation_docs

    cfg = _cfg(tasks=["gsm8k"], generator="gsm_symbolic", test_size=30, val_size=5, train_size=40)
    splits, docs = load_splits(cfg), generated_validation_docs(cfg)
    assert [f"Question: {d['question']}\nAnswer:" for d in docs] == [ex.prompt for ex in splits.val]
    assert all("####" in d["answer"] for d in docs)
    trained = {normalise(ex.prompt) for ex in splits.train}
    assert not any(normalise(ex.prompt) in trained for ex in splits.val)
    with pytest.raises(ConfigError, match="no data.generator"):
        generated_validation_docs(_cfg())


def test_suites_and_groups_expand():
    assert len(SUITES["s2ft_commonsense"]) == 8 and set(SUITES["pat_commonsense"]) == \
        set(SUITES["s2ft_commonsense"]) - {"social_iqa"}
    assert expand(["pat_commonsense", "boolq"]) == list(SUITES["pat_commonsense"])
    mmlu = expand(["mmlu"])
    assert len(mmlu) == 57 and all(n.startswith("mmlu_") for n in mmlu)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="prompt_template=none"):
        load_splits(_cfg(prompt_template="alpaca"))
    with pytest.raises(ConfigError, match="no offline copy of \\['squad'\\]"):
        load_splits(_cfg(tasks=["squad"]))
    with pytest.raises(ConfigError, match="exactly one"):
        load_splits(_cfg(tasks=["gsm8k", "arc_easy"], generator="gsm_symbolic"))


def test_formatted_items_are_cached_and_identical(splits, monkeypatch):
    import sparsetune.data.sources.benchmarks as source

    def no_formatting(*args, **kwargs):
        raise AssertionError("items of an unchanged task must come from the cache")

    monkeypatch.setattr(source, "example_from_doc", no_formatting)
    again = load_splits(_cfg())
    assert again.train == splits.train and again.test == splits.test and again.val == splits.val
