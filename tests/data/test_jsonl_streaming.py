"""Large jsonl files stream (issue #22 item 6): the same parts and the same token ids as reading the
file whole and tokenising it up front, Python memory that does not grow with the text, over-long
rows counted in one warning, JSON arrays read a chunk at a time, a file changed under a job refused."""

from __future__ import annotations

import json
import logging
import pickle
import random
import threading
import tracemalloc
from pathlib import Path

import pytest

from sparsetune.config.schema import DataConfig
from sparsetune.data import build_train_dataset, load_splits
from sparsetune.data.prompts import format_prompt
from sparsetune.data.rows import LazyExamples
from sparsetune.data.sources import jsonl_scan
from sparsetune.data.sources.jsonl import SPLIT_NAMES, example_from_row
from sparsetune.data.sources.split import make_splits
from sparsetune.data.text import TextDataset, encode_pair, tokenizer_adds_bos
from sparsetune.data.types import Example
from sparsetune.errors import DataError
from sparsetune.models.tiny import byte_tokenizer

TOK = byte_tokenizer()


def _cfg(path, **kw) -> DataConfig:
    return DataConfig(name="jsonl", kind="text", source="jsonl", path=str(path), **kw)


def _reference(paths: list[Path], cfg: DataConfig):
    """What load_jsonl gave before streaming: every row as an Example, then split.make_splits."""
    by_task, fixed, has_split = {}, {"train": [], "val": [], "test": []}, False
    for path in paths:
        text = path.read_text()
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
        for row in rows:
            ex = example_from_row(row, cfg, path.stem, "x")
            has_split = "split" in row
            if has_split:
                fixed[SPLIT_NAMES[row["split"]]].append(ex)
            else:
                by_task.setdefault(ex.task, []).append(ex)
    if not has_split:
        return make_splits(by_task, cfg)
    train_by_task = {}
    for ex in fixed["train"]:
        train_by_task.setdefault(ex.task, []).append(ex)
    return make_splits(train_by_task, cfg, test=fixed["test"] or None, val=fixed["val"])


def _rows(n: int, seed: int, tasks: int = 1, split: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = {"prompt": f"Question {rng.randint(0, n)}: how many {rng.choice(['apples', 'rivers'])}?",
               "answer": str(rng.randint(0, 99))}  # repeated prompts on purpose: duplicates are dropped
        if tasks > 1:
            row["task"] = f"t{rng.randint(0, tasks - 1)}"
        if split:
            row["split"] = rng.choice(["train", "train", "train", "val", "test", "dev"])
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict], array: bool = False) -> Path:
    path.write_text(json.dumps(rows, indent=1) if array else "".join(json.dumps(r) + "\n" for r in rows))
    return path


CASES = [  # (rows, JSON array, config)
    (_rows(300, 0, tasks=3), False, dict(test_size=20, val_size=15, split_seed=1)),
    (_rows(300, 1), True, dict(test_size=10, val_size=0, train_size=100, split_seed=0)),
    (_rows(120, 2, tasks=4), False, dict(test_size=1000, val_size=5, split_seed=7)),  # small tasks: half held out
    (_rows(300, 3, tasks=2, split=True), False, dict(test_size=5, split_seed=2)),  # the file's own split
    ([dict(r, split="train" if r["split"] == "test" else r["split"]) for r in _rows(200, 4, split=True)], True,
     dict(test_size=7, split_seed=3)),  # a split column without test rows: held out from train
]


@pytest.mark.parametrize("rows,array,kw", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_same_parts_in_the_same_order_as_reading_the_file_whole(tmp_path, rows, array, kw):
    path = _write(tmp_path / ("d.json" if array else "d.jsonl"), rows, array)
    cfg = _cfg(path, **kw)
    got, want = load_splits(cfg), _reference([path], cfg)
    for part in ("train", "val", "test"):
        assert isinstance(getattr(got, part), LazyExamples)
        assert list(getattr(got, part)) == getattr(want, part), part
    assert len(got.test) > 0 and len(got.train) > 0


def test_same_parts_over_several_files(tmp_path):
    a = _write(tmp_path / "a.jsonl", _rows(150, 5, tasks=2))
    b = _write(tmp_path / "b.json", _rows(90, 6), array=True)
    cfg = _cfg(f"{a},{b}", test_size=12, val_size=9, split_seed=4)
    got, want = load_splits(cfg), _reference([a, b], cfg)
    assert [list(got.train), list(got.val), list(got.test)] == [want.train, want.val, want.test]


def _up_front(examples, tokenizer, max_length, template):
    """The items TextDataset built before it tokenised lazily: one batch call, then encode_pair."""
    bos = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else None
    prompts = tokenizer([format_prompt(ex.prompt, template, tokenizer) for ex in examples],
                        add_special_tokens=False)["input_ids"]
    answers = tokenizer([ex.answer for ex in examples], add_special_tokens=False)["input_ids"]
    return [encode_pair(p, a, max_length, bos, tokenizer.eos_token_id) for p, a in zip(prompts, answers)]


@pytest.mark.parametrize("template,max_length", [("alpaca", 96), ("plain", 40), ("none", 512)])
def test_items_are_the_token_ids_tokenising_up_front_gave(tmp_path, template, max_length):
    rows = _rows(200, 7) + [{"prompt": "long " * 80 + "é ü 漢字", "answer": "ü " * 30}]
    splits = load_splits(_cfg(_write(tmp_path / "d.jsonl", rows), test_size=5))
    dataset, _ = build_train_dataset(splits, TOK, DataConfig(max_length=max_length, prompt_template=template))
    want = _up_front(list(splits.train), TOK, max_length, template)
    assert len(dataset) == len(want)
    for i, (ids, labels) in enumerate(want):
        item = dataset[i]
        assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels, i
    assert dataset.num_tokens == sum(len(ids) for ids, _ in want)


@pytest.mark.slow
def test_items_match_on_smollm2_with_its_chat_template(tmp_path):
    from sparsetune.config.compose import compose
    from sparsetune.models.loading import load_model

    _, tok = load_model(compose(["model=smollm2_135m"]).model)
    examples = [Example(prompt=r["prompt"] + " Ünïcode — ok?", answer=r["answer"], task="t") for r in _rows(300, 8)]
    for template in ("chat", "alpaca"):
        dataset = TextDataset(examples, tok, 48, template)
        assert dataset._fast_lengths is True
        want = _up_front(examples, tok, 48, template)
        assert [(dataset[i]["input_ids"].tolist(), dataset[i]["labels"].tolist()) for i in range(300)] == want


def test_overlong_rows_are_truncated_and_counted_in_one_warning(caplog):
    # the byte tokenizer: one token per byte, no BOS, an EOS after the answer
    examples = [Example(prompt="p" * n, answer="a", task="t") for n in (10, 30, 28, 29, 100, 5)]
    with caplog.at_level(logging.WARNING, logger="sparsetune.data.text"):
        dataset = TextDataset(examples, TOK, max_length=30, template="none")
    warnings = [r.getMessage() for r in caplog.records if r.name == "sparsetune.data.text"]
    assert warnings == ["3 of 6 rows are longer than data.max_length=30 tokens and are truncated (the prompt from "
                        "the left; raise data.max_length to keep them whole)"]  # 30+2, 29+2, 100+2 tokens
    assert dataset.overlong == 3
    assert [len(dataset[i]["input_ids"]) for i in range(6)] == [12, 30, 30, 30, 30, 7]
    assert dataset.num_tokens == 12 + 30 + 30 + 30 + 30 + 7
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparsetune.data.text"):
        TextDataset(examples[:1], TOK, max_length=30, template="none")
    assert not caplog.records  # nothing to say when every row fits


def _big_file(path: Path, megabytes: float) -> Path:
    rng, size = random.Random(0), 0
    with path.open("w") as f:
        i = 0
        while size < megabytes * 1e6:
            line = json.dumps({"prompt": f"Question {i}: " + "word " * rng.randint(10, 60), "answer": str(i)}) + "\n"
            f.write(line)
            size, i = size + len(line), i + 1
    return path


def _python_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_python_memory_of_loading_does_not_grow_with_the_text(tmp_path):
    """Reading a file whole held its rows as Examples and every token id as a Python int (a 30 MB file
    peaked at 5 GB); streaming holds a few integers per row and one chunk of rows at a time."""
    cfg = DataConfig(name="jsonl", kind="text", source="jsonl", test_size=10, max_length=128)

    def load(path):
        splits = load_splits(_cfg(path, test_size=10))
        dataset, _ = build_train_dataset(splits, TOK, cfg)
        assert len(dataset) > 100 and dataset[len(dataset) - 1]["input_ids"].numel()

    small, big = _big_file(tmp_path / "small.jsonl", 0.3), _big_file(tmp_path / "big.jsonl", 3)
    load(small)  # imports, first-call caches
    small_peak, big_peak = _python_peak(lambda: load(small)), _python_peak(lambda: load(big))
    assert big_peak < small_peak + 1.5e6, (small_peak, big_peak)  # ~13,000 rows more: ~40 bytes each


def test_json_array_read_a_little_at_a_time_gives_every_row_and_its_span(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_scan, "CHUNK", 64)  # rows span many reads
    rows = [{"prompt": f"ünï {i} " * (i % 7 + 1), "answer": str(i), "n": 10 ** (i % 12), "ok": i % 2 == 0}
            for i in range(40)]
    path = tmp_path / "a.json"
    path.write_text(" \n" + json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    scanned = list(jsonl_scan.scan_rows(path))
    assert [value for _, _, _, value in scanned] == rows
    data = path.read_bytes()
    assert [json.loads(data[s:s + n]) for _, s, n, _ in scanned] == rows
    assert [where for where, _, _, _ in scanned] == [f"{path}: row {i}" for i in range(40)]


@pytest.mark.parametrize("text", [
    '[\n{"prompt": "a", "answer": "b"}\n{"prompt": "c"}]',
    '[\n{"prompt": "a", "answer": "b"},\n{"prompt": "c", "answer": tru}\n]',
    '[\n{"prompt": "a", "answer": "b"},\n{"prompt": "unterminated\n]',
    '[\n{"prompt": "a", "answer": "b"}\n] extra',
    '[\n{"prompt": "a", "answer": "b"},\n',
    '[\n{"prompt": "a", "answer": "b"},\n{"prompt": "a very long string that spans many small reads, ' + 'x' * 200,
])
def test_broken_json_array_names_the_line_and_problem_json_names(tmp_path, monkeypatch, text):
    monkeypatch.setattr(jsonl_scan, "CHUNK", 8)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as whole:
        json.loads(text)
    with pytest.raises(DataError) as info:
        load_splits(_cfg(path))
    assert str(info.value) == f"{path}:{whole.value.lineno}: invalid JSON ({whole.value.msg})"


def test_not_utf8_names_the_byte(tmp_path):
    for name, head in (("a.jsonl", b'{"prompt": "ok", "answer": "y"}\n'), ("b.json", b'[{"prompt": "ok", "answer": "y"}, ')):
        path = tmp_path / name
        path.write_bytes(head + b'{"prompt": "\xff", "answer": "x"}\n' + (b"]" if name.endswith("json") else b""))
        with pytest.raises(DataError, match=rf"not UTF-8 text \(invalid start byte at byte {len(head) + 12}\)"):
            load_splits(_cfg(path))


def test_a_file_changed_after_loading_stops_with_one_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", _rows(50, 9))
    splits = load_splits(_cfg(path, test_size=5))
    path.write_text(path.read_text().replace("Question", "Query"))  # same rows, other bytes
    with pytest.raises(DataError, match=r"d\.jsonl: changed since it was loaded; start the job again$"):
        splits.train[0]


def test_parts_behave_as_read_only_lists_and_pickle(tmp_path):
    path = _write(tmp_path / "d.jsonl", _rows(60, 10))
    splits = load_splits(_cfg(path, test_size=5, val_size=5))
    train = splits.train
    everything = list(train)
    assert train[-1] == everything[-1] and list(train[2:6]) == everything[2:6] and isinstance(train[2:6], LazyExamples)
    assert len(train + splits.val + splits.test) == len(train) + 10
    assert list(pickle.loads(pickle.dumps(train))) == everything
    results: list[list] = []
    threads = [threading.Thread(target=lambda: results.append(list(train))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [everything] * 4
