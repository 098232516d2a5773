"""Standard lm-eval task names offline: lm-eval's stock task definitions on the shipped copies, with
only the data source and split redirected; held-out benchmark items scored on exactly their rows."""

from __future__ import annotations

import json

import pytest
import yaml

from sparsetune.config.schema import EvalConfig
from sparsetune.data.benchmarks import SHIPPED, full_split_folder, shipped_rows, task_manager
from sparsetune.data.types import Example
from sparsetune.errors import UserError
from sparsetune.eval.lm import evaluate_benchmark_rows, evaluate_lm_tasks, expand_suites, resolve_lm_tasks

DATA_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
             "fewshot_split", "task", "include"}


def test_redirect_keeps_every_stock_field_but_the_data():
    folder = full_split_folder(list(SHIPPED))
    for name, entry in SHIPPED.items():
        spec = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert set(spec) <= DATA_KEYS, f"{name} overrides {set(spec) - DATA_KEYS}"
        assert spec["include"].endswith(entry.stock_yaml) and spec["dataset_path"] == "parquet"
        split = spec["test_split"]
        assert split == entry.split == spec["fewshot_split"] and list(spec["dataset_kwargs"]["data_files"]) == [split]
        assert spec["training_split"] is None and spec["validation_split"] is None
    task = task_manager(str(folder)).load(["hellaswag"])["tasks"]["hellaswag"]
    # the stock process_docs and prompt come through the include
    doc = task.eval_docs[0]
    assert task.config.process_docs is not None and "query" in doc and task.doc_to_text(doc) == doc["query"]
    assert len(task.eval_docs) == len(shipped_rows("hellaswag")) == 10042


def test_standard_names_run_offline_on_the_shipped_split(llama, tok):
    res = evaluate_lm_tasks(llama, tok, ["arc_easy", "piqa"], EvalConfig(limit=3, batch_size=8))
    assert res["arc_easy"]["n"] == 3 and res["piqa"]["n"] == 3
    assert 0 <= res["arc_easy"]["acc"] <= 1 and "acc_norm" in res["piqa"] and "acc_stderr" in res["piqa"]
    assert res["average"]["n"] == 6 and "split" not in res["average"]
    assert res["arc_easy"]["split"] == "validation" == res["piqa"]["split"]  # what ships is what is scored


def test_groups_and_suites_resolve_offline():
    manager, remote = resolve_lm_tasks(["mmlu", "gsm8k", *expand_suites(["s2ft_commonsense"])], EvalConfig())
    assert not remote and {"mmlu", "mmlu_anatomy", "gsm8k", "social_iqa"} <= set(manager.all_tasks)


def test_hub_data_offline_fails_in_one_line(llama, tok):
    with pytest.raises(UserError, match="Hub is unreachable") as info:
        evaluate_lm_tasks(llama, tok, ["arc_easy"], EvalConfig(task_data="hub"))
    assert "\n" not in str(info.value) and "offline copies" in str(info.value)


def test_heldout_rows_are_scored_by_the_stock_task_on_exactly_those_rows(llama, tok, tmp_path):
    rows = [5, 17, 42]
    table = shipped_rows("arc_easy")
    examples = [Example(prompt="unused", answer="unused", task="arc_easy", row=r) for r in rows]
    res = evaluate_benchmark_rows(llama, tok, examples, EvalConfig(log_samples=True, batch_size=8),
                                  out_dir=tmp_path)
    assert res["arc_easy"]["n"] == 3 and res["arc_easy"]["split"] == "validation"
    samples = [json.loads(line) for line in (tmp_path / "samples_arc_easy.jsonl").read_text().splitlines()]
    assert sorted(s["doc"]["id"] for s in samples) == sorted(table[r]["id"] for r in rows)
    contexts = [s["arguments"][0][0] if isinstance(s["arguments"], list) else s["arguments"]["gen_args_0"]["arg_0"]
                for s in samples]
    assert all(c.startswith("Question: ") for c in contexts), contexts


def test_a_user_task_whose_data_lacks_a_split_is_one_line(llama, tok, tmp_path):
    # a new user's folder: lm-eval's stock piqa, data redirected to a file with a validation split only,
    # but the stock training_split (train) left in place
    import lm_eval

    rows = tmp_path / "piqa_val.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in shipped_rows("piqa").select(range(4))))
    stock = f"{lm_eval.__path__[0]}/tasks/piqa/piqa.yaml"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_piqa.yaml").write_text(yaml.safe_dump({
        "include": stock, "task": "my_piqa", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(rows)}}}))
    cfg = EvalConfig(tasks=["my_piqa"], include_path=str(tmp_path / "tasks"))
    with pytest.raises(UserError, match="lm-eval task my_piqa could not be loaded: KeyError") as info:
        evaluate_lm_tasks(llama, tok, ["my_piqa"], cfg)
    assert "\n" not in str(info.value)


def test_mmlu_is_one_row_with_its_items_and_split(llama, tok):
    res = evaluate_lm_tasks(llama, tok, ["mmlu"], EvalConfig(limit=1, batch_size=8))
    assert set(res) == {"mmlu", "average"}  # the group's aggregate, not 57 subject rows
    assert res["mmlu"]["n"] == 57 and res["mmlu"]["split"] == "test" and 0 <= res["mmlu"]["acc"] <= 1
