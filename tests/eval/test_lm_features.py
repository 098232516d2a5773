"""lm-eval bridge features: own task folders, held-out + lm-eval tasks in one run, few-shot,
per-sample logs, chat prompts, and no patched lm-eval internals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sparsetune.config.schema import Config, EvalConfig
from sparsetune.data.prompts import format_prompt
from sparsetune.data.text import TextDataset
from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError, DataError, UserError
from sparsetune.eval.lm import evaluate_lm_tasks, evaluate_text
from sparsetune.eval.lm_tasks import write_local_tasks
from sparsetune.eval.prefix_lm import SharedPrefixLM
from sparsetune.eval.suite import HELDOUT, eval_tasks, evaluate_model

ROOT = Path(__file__).resolve().parents[2]
CHAT = ("{% for m in messages %}<|{{m.role}}|>{{m.content}}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _own_tasks(folder: Path, rows: int = 6) -> Path:
    """A user's lm-eval task folder: a jsonl of multiple-choice rows and a task YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "colors.jsonl"
    data.write_text("".join(json.dumps({"question": f"Colour number {i}?", "choices": ["red", "green", "blue"],
                                        "label": i % 3}) + "\n" for i in range(rows)))
    (folder / "my_colors.yaml").write_text(yaml.safe_dump({
        "task": "my_colors",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}} Answer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }))
    return folder


def test_own_task_folder_runs_offline(llama, tok, tmp_path):
    folder = _own_tasks(tmp_path / "my_tasks", rows=6)
    res = evaluate_lm_tasks(llama, tok, ["my_colors"], EvalConfig(include_path=str(folder), batch_size=4))
    assert 0.0 <= res["my_colors"]["acc"] <= 1.0
    assert res["my_colors"]["n"] == 6


def test_own_task_folder_errors(llama, tok, tmp_path):
    with pytest.raises(ConfigError, match="include_path"):
        evaluate_lm_tasks(llama, tok, ["x"], EvalConfig(include_path=str(tmp_path / "missing")))
    folder = _own_tasks(tmp_path / "my_tasks")
    # a name that is not in the folder is a standard task: needs the Hub, which is off in tests
    with pytest.raises(UserError, match="Hub is unreachable"):
        evaluate_lm_tasks(llama, tok, ["my_colours"], EvalConfig(include_path=str(folder)))


def test_eval_tasks_reserved_heldout_name():
    assert eval_tasks(EvalConfig()) == (True, [])
    assert eval_tasks(EvalConfig(tasks=["arc_easy"])) == (False, ["arc_easy"])
    assert eval_tasks(EvalConfig(tasks=[HELDOUT, "a", "a"])) == (True, ["a"])


def _mc(n: int, task: str = "pattern", offset: int = 0) -> list[Example]:
    choices = ["alpha", "be", "gamma"]
    return [Example(f"Question {i + offset}?", choices[i % 3], task, list(choices), i % 3) for i in range(n)]


def test_heldout_and_own_task_in_one_run_with_logs(llama, tok, tmp_path):
    folder = _own_tasks(tmp_path / "my_tasks", rows=5)
    cfg = Config()
    cfg.data.prompt_template = "plain"
    cfg.eval = EvalConfig(tasks=[HELDOUT, "my_colors"], include_path=str(folder), log_samples=True)
    splits = Splits("text", train=_mc(4, offset=100), val=[], test=_mc(6))
    run = tmp_path / "run"
    run.mkdir()
    res = evaluate_model(cfg, llama, tok, splits, "test", run)
    assert res["pattern"]["n"] == 6 and res["my_colors"]["n"] == 5
    assert res["average"]["acc"] == pytest.approx((res["pattern"]["acc"] + res["my_colors"]["acc"]) / 2)
    out = run / "eval" / "test"
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) >= {"sparsetune_pattern", "my_colors"}
    assert results["task_names"] == {"sparsetune_pattern": "pattern"}
    pattern = [json.loads(line) for line in (out / "samples_pattern.jsonl").read_text().splitlines()]
    colors = (out / "samples_my_colors.jsonl").read_text().splitlines()
    assert len(pattern) == 6 and len(colors) == 5
    assert {"doc", "target", "resps", "acc"} <= set(pattern[0])
    # no log folder unless asked
    cfg.eval.log_samples = False
    evaluate_model(cfg, llama, tok, splits, "val", run)
    assert not (run / "eval" / "val").exists()


def test_heldout_default_unchanged_without_tasks(llama, tok, tmp_path):
    cfg = Config()
    cfg.data.prompt_template = "plain"
    splits = Splits("text", train=[], val=[], test=_mc(3))
    res = evaluate_model(cfg, llama, tok, splits, "test", tmp_path)
    direct = evaluate_text(llama, tok, _mc(3), EvalConfig(), "plain", tmp_path / "direct")
    assert res == direct


def test_fewshot_heldout_draws_from_train(llama, tok, tmp_path, monkeypatch):
    seen: list[tuple[str, str]] = []
    original = SharedPrefixLM.loglikelihood  # the LM lm-eval scores with (eval.share_prefix, the default)

    def spy(self, requests, disable_tqdm=False):
        seen.extend(tuple(r.args) for r in requests)
        return original(self, requests, disable_tqdm=disable_tqdm)

    monkeypatch.setattr(SharedPrefixLM, "loglikelihood", spy)
    train = [Example(f"Train item {i}?", "be", "pattern", ["alpha", "be", "gamma"], 1) for i in range(4)]
    res = evaluate_text(llama, tok, _mc(3), EvalConfig(num_fewshot=2), "plain", tmp_path, fewshot_examples=train)
    assert res["pattern"]["n"] == 3
    assert len(seen) == 3 * 3
    for (ctx, _), i in zip(seen, [0, 0, 0, 1, 1, 1, 2, 2, 2]):
        # two shots, each its prompt + gold answer, then the item's own prompt
        shots, own = ctx.rsplit("\n\n", 1)[0].split("\n\n"), ctx.rsplit("\n\n", 1)[1]
        assert len(shots) == 2 and all(s.startswith("Train item") and s.endswith("?\nbe") for s in shots)
        assert own == format_prompt(f"Question {i}?", "plain")
    with pytest.raises(DataError, match="num_fewshot=5"):
        write_local_tasks(_mc(2), "plain", tmp_path / "x", num_fewshot=5, fewshot_examples=train)


def test_chat_template_prompts_agree_in_training_and_eval(tok, tmp_path):
    import copy

    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = CHAT
    ex = Example("What is 2 + 2?", "4", "sum", ["3", "4"], 1)
    item = TextDataset([ex], chat_tok, max_length=256, template="chat")[0]
    prompt_ids = item["input_ids"][item["labels"] == -100]
    train_prompt = chat_tok.decode(prompt_ids, skip_special_tokens=True)
    folder, tasks = write_local_tasks([ex], "chat", tmp_path, tokenizer=chat_tok)
    data = Path(yaml.safe_load((folder / f"{tasks[0].lm_name}.yaml").read_text())["dataset_kwargs"]
                ["data_files"]["test"])
    eval_prompt = json.loads(data.read_text().splitlines()[0])["query"]
    assert train_prompt == eval_prompt == "<|user|>What is 2 + 2?<|assistant|>"
    with pytest.raises(ConfigError, match="no chat template"):
        format_prompt("hi", "chat", tok)
    with pytest.raises(ConfigError, match="no chat template"):
        write_local_tasks([ex], "chat", tmp_path / "b", tokenizer=tok)


def test_lm_eval_internals_not_patched(llama, tok, tmp_path, monkeypatch, caplog):
    import logging

    import lm_eval.evaluator as ev

    before = (ev.add_env_info, ev.get_git_commit_hash, ev.simple_evaluate)
    calls = []
    monkeypatch.setattr(ev, "simple_evaluate", lambda *a, **k: calls.append(1))
    with caplog.at_level(logging.INFO, logger="sparsetune.eval.lm"):
        evaluate_text(llama, tok, _mc(2), EvalConfig(), "plain", tmp_path)
    assert not calls  # the public evaluate() is used
    # off a terminal, one progress line per task goes to the log (lm-eval's bars stay captured)
    assert "lm-eval: sparsetune_pattern (test split, 2 items, 0-shot)" in caplog.text
    with pytest.raises(ConfigError, match="num_fewshot"):
        evaluate_text(llama, tok, _mc(2), EvalConfig(num_fewshot=-1), "plain", tmp_path)
    monkeypatch.undo()
    assert (ev.add_env_info, ev.get_git_commit_hash, ev.simple_evaluate) == before
