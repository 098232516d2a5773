"""lm-eval bridge on tiny random Llamas: scores must equal a direct computation with the model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lm_eval.models.huggingface import HFLM

from sparsetune.config.schema import EvalConfig
from sparsetune.data.prompts import format_prompt
from sparsetune.data.types import Example
from sparsetune.errors import ConfigError, DataError, UserError
from sparsetune.eval.lm import evaluate_lm_tasks, evaluate_text
from sparsetune.eval.lm_tasks import FALLBACK, answer_rule, extract_answer, write_local_tasks
from sparsetune.eval.prefix_lm import SharedPrefixLM
from sparsetune.models.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "Sum=42 yes"  # what the scripted model answers to every prompt (all characters distinct)


def _tiny_llama(**overrides):
    spec = yaml.safe_load((ROOT / "recipes/model/tiny_llama.yaml").read_text())
    return build_tiny(spec["model_type"], {**spec["config"], **overrides})


def _loglik(model, tok, context: str, choice: str) -> float:
    """Sum of log p(continuation tokens) with the model directly. Like lm-eval, trailing whitespace of
    the context belongs to the continuation (this byte tokenizer adds no special tokens)."""
    ctx = context.rstrip()
    ids = tok(context + choice)["input_ids"]
    n_ctx = len(tok(ctx)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(sum(logp[i - 1, ids[i]] for i in range(n_ctx, len(ids))))


@pytest.mark.parametrize("share_prefix", [True, False])
def test_multiple_choice_matches_direct_loglikelihood(share_prefix, llama, tok, tmp_path, monkeypatch):
    llama.eval()
    prompts = [f"Question {i}: which word fits the pattern {i * 7 % 13}?" for i in range(8)]
    choices = ["alpha", "be", "gamma ray", "d"]
    lls = np.array([[_loglik(llama, tok, format_prompt(p, "alpaca"), c) for c in choices] for p in prompts])
    # gold = the model's own best answer on the first 5, its worst on the last 3
    labels = [int(lls[i].argmax()) if i < 5 else int(lls[i].argmin()) for i in range(8)]
    lens = np.array([len(c) for c in choices], dtype=float)
    want_norm = float(np.mean([(lls[i] / lens).argmax() == labels[i] for i in range(8)]))
    examples = [Example(p, choices[y], "pattern", list(choices), y) for p, y in zip(prompts, labels)]
    # spy on lm-eval's loglikelihood requests: each (context, continuation) and its score
    seen: dict[tuple[str, str], float] = {}
    lm_class = SharedPrefixLM if share_prefix else HFLM
    original = lm_class.loglikelihood

    def spy(self, requests, disable_tqdm=False):
        out = original(self, requests, disable_tqdm=disable_tqdm)
        seen.update({tuple(r.args): ll for r, (ll, _) in zip(requests, out)})
        return out

    monkeypatch.setattr(lm_class, "loglikelihood", spy)
    res = evaluate_text(llama, tok, examples, EvalConfig(batch_size=3, share_prefix=share_prefix), "alpaca", tmp_path)

    # the prompt is formatted as in training and the choice follows it directly
    assert set(seen) == {(format_prompt(p, "alpaca"), c) for p in prompts for c in choices}
    for i, p in enumerate(prompts):
        for j, c in enumerate(choices):
            assert seen[(format_prompt(p, "alpaca"), c)] == pytest.approx(lls[i, j], abs=1e-3)

    assert res["pattern"]["acc"] == pytest.approx(5 / 8)
    assert res["pattern"]["acc_norm"] == pytest.approx(want_norm)
    assert res["pattern"]["n"] == 8
    assert res["average"]["acc"] == pytest.approx(5 / 8)


def _scripted_llama(tok, script: str):
    """A real LlamaForCausalLM whose greedy output after any prompt ending in "\\n" is `script` + EOS.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding
    and the model is a bigram machine; the (untied) lm_head is solved so each script token predicts
    the next one.
    """
    model = _tiny_llama(tie_word_embeddings=False)
    chain = tok("\n" + script)["input_ids"] + [tok.eos_token_id]
    assert len(set(chain[:-1])) == len(chain) - 1, "script characters must be distinct"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        h = model.model.norm(model.model.embed_tokens.weight[chain[:-1]])  # (k, hidden)
        target = torch.zeros(len(chain) - 1, model.config.vocab_size)
        target[torch.arange(len(chain) - 1), torch.tensor(chain[1:])] = 30.0
        model.lm_head.weight.copy_(torch.linalg.lstsq(h, target).solution.T)
    return model.eval()


def test_scripted_model_generates_script(tok):
    model = _scripted_llama(tok, SCRIPT)
    ids = torch.tensor([tok(format_prompt("anything at all?", "alpaca"))["input_ids"]])
    out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == SCRIPT


def test_generative_exact_match_with_answer_extraction(tok, tmp_path):
    model = _scripted_llama(tok, SCRIPT)
    # numbers: last number of the output ("42"); "42.0" and "4,2" normalise to 42
    arith = ["42", "42.0", "41", "4,2", "7"]
    # labels: first of {yes, no} in the output ("yes")
    yesno = ["yes", "no", "YES", "no"]
    # free text: first line of the output
    text = ["Sum=42 yes", "Sum = 42", "something else entirely"]
    examples = ([Example(f"q{i}", a, "arith") for i, a in enumerate(arith)]
                + [Example(f"yn{i}", a, "yes/no") for i, a in enumerate(yesno)]
                + [Example(f"t{i}", a, "free") for i, a in enumerate(text)])
    res = evaluate_text(model, tok, examples, EvalConfig(batch_size=2, max_new_tokens=16), "alpaca", tmp_path)
    assert res["arith"]["exact_match"] == pytest.approx(3 / 5)
    assert res["yes/no"]["exact_match"] == pytest.approx(2 / 4)
    assert res["free"]["exact_match"] == pytest.approx(1 / 3)
    assert res["average"]["exact_match"] == pytest.approx((3 / 5 + 2 / 4 + 1 / 3) / 3)


def test_max_new_tokens_truncates_generation(tok, tmp_path):
    model = _scripted_llama(tok, SCRIPT)
    examples = [Example("q", "42", "arith"), Example("r", "4", "arith")]
    # 6 new tokens: "Sum=42" -> 42; 5 tokens: "Sum=4" -> 4
    six = evaluate_text(model, tok, examples, EvalConfig(max_new_tokens=6), "alpaca", tmp_path / "a")
    five = evaluate_text(model, tok, examples, EvalConfig(max_new_tokens=5), "alpaca", tmp_path / "b")
    assert six["arith"]["exact_match"] == 0.5 and five["arith"]["exact_match"] == 0.5
    assert evaluate_text(model, tok, examples[:1], EvalConfig(max_new_tokens=5), "alpaca",
                         tmp_path / "c")["arith"]["exact_match"] == 0.0


def test_scoring_generate_forces_generation_on_choice_items(tok, tmp_path):
    model = _scripted_llama(tok, SCRIPT)
    examples = [Example("a", "yes", "mc", ["yes", "no"], 0), Example("b", "no", "mc", ["yes", "no"], 1)]
    res = evaluate_text(model, tok, examples, EvalConfig(scoring="generate"), "alpaca", tmp_path)
    assert res["mc"] == {"exact_match": 0.5, "n": 2.0, "exact_match_stderr": 0.5}  # sqrt(.25 / 1)


def test_limit_caps_examples_per_task(llama, tok, tmp_path):
    examples = [Example(f"p{i}", "a", "t", ["a", "b"], 0) for i in range(5)]
    res = evaluate_text(llama, tok, examples, EvalConfig(limit=2), "plain", tmp_path)
    assert res["t"]["n"] == 2


def test_rng_and_train_mode_restored(llama, tok, tmp_path):
    llama.train()
    llama.model.layers[0].eval()  # a mixed state must come back exactly
    examples = [Example("p", "a", "t", ["a", "b"], 0), Example("q", "7", "g")]
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    evaluate_text(llama, tok, examples, EvalConfig(max_new_tokens=2), "alpaca", tmp_path)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert llama.training and llama.model.training and llama.model.layers[1].training
    assert not llama.model.layers[0].training
    llama.eval()


def test_answer_rules():
    num = answer_rule(["12", "-3", "1,000", "2.5"])
    assert num.kind == "number"
    assert extract_answer("first 3 apples, then 1,000 pears: 17.", num) == "17"
    assert extract_answer("no digits here", num) == FALLBACK
    lab = answer_rule(["true", "false", "true"])
    assert lab.kind == "label"
    assert extract_answer("The answer is False, not true", lab) == "False"
    assert extract_answer("untrue", lab) == FALLBACK
    letters = answer_rule(["A", "B", "C", "D"])
    assert extract_answer("a good guess is C", letters) == "C"  # the article "a" is not option A
    free = answer_rule(["the cat sat", "a dog"])
    assert free.kind == "text"
    assert extract_answer("\n  the cat sat  \nmore", free) == "the cat sat"


def test_scoring_errors(tmp_path):
    gen = [Example("p", "a", "t")]
    with pytest.raises(DataError, match="without choices"):
        write_local_tasks(gen, "alpaca", tmp_path, scoring="multiple_choice")
    with pytest.raises(ConfigError, match="eval.scoring"):
        write_local_tasks(gen, "alpaca", tmp_path, scoring="vote")
    with pytest.raises(DataError, match="not one of its choices"):
        write_local_tasks([Example("p", "z", "t", ["a", "b"])], "alpaca", tmp_path)
    with pytest.raises(DataError, match="no evaluation examples"):
        write_local_tasks([], "alpaca", tmp_path)


def test_written_task_uses_absolute_paths_and_mode(tmp_path):
    folder, tasks = write_local_tasks(
        [Example("p", "b", "my task!", ["a", "b"]), Example("q", "3", "sum")], "plain", tmp_path)
    assert [(t.name, t.scoring) for t in tasks] == [("my task!", "multiple_choice"), ("sum", "generate")]
    spec = yaml.safe_load((folder / f"{tasks[0].lm_name}.yaml").read_text())
    data = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data.exists()
    assert '"label": 1' in data.read_text()


def test_lm_tasks_offline_fails_fast(llama, tok):
    # lambada has no offline copy: it needs the Hub
    with pytest.raises(UserError, match="Hub is unreachable"):
        evaluate_lm_tasks(llama, tok, ["lambada_openai"], EvalConfig())


@pytest.mark.slow
def test_lm_tasks_unknown_name(llama, tok, monkeypatch):
    # lm-eval's task index takes ~20 s to build
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="did you mean arc_easy"):
        evaluate_lm_tasks(llama, tok, ["arc_eazy"], EvalConfig())
