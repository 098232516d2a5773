"""PAT's defining property: the folded, physically pruned stock model equals the masked model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from sparsetune.methods.base import MethodContext
from sparsetune.methods.pat import PAT, PATConfig, hidden_importance, prune_hidden, top_channels
from sparsetune.models.arch import get_arch
from sparsetune.models.tiny import build_tiny, byte_tokenizer

torch.set_num_threads(1)


def tiny(name: str, **overrides):
    spec = yaml.safe_load(open(f"recipes/model/{name}.yaml"))
    return build_tiny(spec["model_type"], {**spec["config"], **overrides})


def trained_pat(name: str, steps: int = 3, model_overrides=None, **cfg):
    """PAT after a few real optimiser steps, with a random mask so the top-N set is arbitrary."""
    torch.manual_seed(0)
    model = tiny(name, **(model_overrides or {}))
    pat = PAT(PATConfig(**{"rank": 8, "r": 4, "alpha": 8.0, "dropout": 0.0, **cfg}))
    model = pat.apply(model, MethodContext.of(model))
    opt = torch.optim.AdamW(pat.parameter_groups(model, 2e-2, 0.0))
    ids = torch.randint(0, 256, (2, 10))
    for step in range(steps):
        out = model(input_ids=ids, labels=ids)
        loss = out.loss + sum(pat.extra_loss(model, {}, out).values())
        loss.backward()
        opt.step()
        opt.zero_grad()
        pat.on_step(step + 1, 100)
    with torch.no_grad():
        pat.mask.m.copy_(torch.randn(pat.hidden))
    model.eval()
    return pat, model


CASES = [
    ("tiny_llama", {}),  # GQA, tied embeddings (diagonal embedding HSM keeps them tied)
    ("tiny_llama", {"embed_hsm": "full"}),  # full embedding HSM: the tie breaks, lm_head saved
    ("tiny_qwen2", {"base": "dora"}),  # q/k/v biases, head_dim 24 != 64/4, untied
    ("tiny_qwen2", {"hsm": "dense", "base": "full"}),
    ("tiny_gemma", {}),  # sqrt(d) embedding scale, (1 + w) norms, MQA, tied
    ("tiny_mistral", {"base": "frozen"}),
]


@pytest.mark.parametrize("name,cfg", CASES)
def test_pruned_model_equals_masked_model(name, cfg):
    pat, model = trained_pat(name, **cfg)
    ids = torch.randint(0, 256, (3, 13))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        pruned = pat.prepare_for_eval(model)
        got = pruned(input_ids=ids).logits
    # the training model is untouched and the HSMs / LoRA / scales are non-trivial
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(w.hsm.s.detach().sub(1).abs().max() > 1e-3 for w in pat.writes)
    assert pruned.config.hidden_size == pat.n_keep == 48 != int((pat.mask.m > 0).sum())  # exactly N, not #(m>0)
    source = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in source for p in pruned.parameters())  # no storage shared with training
    assert pruned.config.head_dim == get_arch(model.get_base_model() if hasattr(model, "get_base_model")
                                              else model).head_dim
    torch.testing.assert_close(got, masked, rtol=1e-4, atol=1e-5)
    # the pruned channels matter (the equality is not trivially true)
    with torch.no_grad():
        pat.mask.m.neg_()
        assert (model(input_ids=ids).logits - masked).abs().max() > 1e-3
        pat.mask.m.neg_()
    n_params = sum(p.numel() for p in pruned.parameters())
    assert n_params == pat.metrics()["params_after"] < pat.metrics()["params_before"]
    tied = get_arch(pruned).tied_embeddings
    assert tied == (name in ("tiny_llama", "tiny_gemma") and cfg.get("embed_hsm") != "full")


@pytest.mark.parametrize("round_to,expect", [(1, 45), (8, 48), (16, 48), (32, 32)])
def test_round_to_keeps_an_aligned_width_and_the_pruned_model_still_equals_the_masked_one(round_to, expect):
    # Qwen2 accepts any width (explicit head_dim), so only round_to decides: 64 * 0.7 = 44.8
    pat, model = trained_pat("tiny_qwen2", steps=1, prune_ratio=0.3, round_to=round_to)
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        pruned = pat.prepare_for_eval(model)
        torch.testing.assert_close(pruned(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    assert pat.n_keep == expect == pruned.config.hidden_size and expect % round_to == 0
    assert int(pat.mask.hard_gate().sum()) == expect


def test_parameter_count_formula():
    pat, model = trained_pat("tiny_qwen2", steps=1)
    pruned = pat.prepare_for_eval(model)
    d2, layers, hd = 48, 2, 24
    per_layer = (d2 * 4 * hd + 4 * hd) + 2 * (d2 * 2 * hd + 2 * hd) + 4 * hd * d2 + 3 * d2 * 96 + 2 * d2
    expect = 512 * d2 * 2 + layers * per_layer + d2
    assert sum(p.numel() for p in pruned.parameters()) == expect


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_norm_eps_is_scaled_by_d_over_d_prime(name):
    # a large eps makes the direction of the eps correction visible (eps * d'/d would be off by ~1e-2)
    pat, model = trained_pat(name, steps=1, model_overrides={"rms_norm_eps": 0.5}, base="frozen")
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        pruned = pat.prepare_for_eval(model)
        torch.testing.assert_close(pruned(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-6)
    assert pruned.config.rms_norm_eps == pytest.approx(0.5 * 64 / 48)


def test_pruned_model_is_reused_only_while_nothing_changed():
    pat, model = trained_pat("tiny_llama", steps=1)
    first = pat.prepare_for_eval(model)
    assert pat.prepare_for_eval(model) is first  # final eval, then export: fold once
    with torch.no_grad():
        pat.writes[0].hsm.s.mul_(2.0)
    assert pat.prepare_for_eval(model) is not first
    model.double()
    assert pat.prepare_for_eval(model).dtype == torch.float64


def test_hard_phase_training_forward_equals_export():
    pat, model = trained_pat("tiny_llama", steps=2)
    pat.on_step(40, 100)  # past t0 = 33.3: the gate is the frozen top-N set, also in train mode
    model.train()
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        train_logits = model(input_ids=ids).logits
        torch.testing.assert_close(pat.prepare_for_eval(model)(input_ids=ids).logits, train_logits,
                                   rtol=1e-4, atol=1e-5)
    assert pat.metrics()["pat_hard"] == 1.0 and float(pat.extra_loss(model, {}, None)["mask"]) == 0.0


def test_export_loads_with_plain_transformers(tmp_path):
    ids = torch.randint(0, 256, (2, 12))
    torch.save(ids, tmp_path / "ids.pt")
    expected = {}
    for name, cfg in (("tiny_llama", {}), ("tiny_qwen2", {"base": "dora"}), ("tiny_gemma", {"embed_hsm": "full"})):
        pat, model = trained_pat(name, **cfg)
        with torch.no_grad():
            expected[name] = model(input_ids=ids).logits
        pat.export(model, tmp_path / name, tokenizer=byte_tokenizer())
        config = json.loads((tmp_path / name / "config.json").read_text())
        info = json.loads((tmp_path / name / "pat.json").read_text())
        assert config["hidden_size"] == 48 and config.get("head_dim") and len(info["keep_index"]) == 48
        assert info["keep_index"] == pat.keep_index().tolist()
    loaded = PAT(PATConfig()).load_export(tiny("tiny_gemma"), tmp_path / "tiny_gemma")  # `eval run=DIR`
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected["tiny_gemma"], rtol=1e-4, atol=1e-5)
    assert PAT(PATConfig()).load_export(tiny("tiny_gemma"), tmp_path) is None
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(1)
        ids = torch.load({str(tmp_path / 'ids.pt')!r})
        out = {{}}
        for name in ("tiny_llama", "tiny_qwen2", "tiny_gemma"):
            path = {str(tmp_path)!r} + "/" + name
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            with torch.no_grad():
                out[name] = model(input_ids=ids).logits
            assert AutoTokenizer.from_pretrained(path)("hi").input_ids
        assert not [m for m in sys.modules if m.startswith("sparsetune")]
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    for name, logits in expected.items():
        torch.testing.assert_close(got[name], logits, rtol=1e-4, atol=1e-5)


def test_prune_hidden_baseline_is_exact_on_a_model_with_zeroed_channels():
    """prune_hidden without HSMs equals the stock model once the dropped channels are never written."""
    model = tiny("tiny_qwen2")
    arch = get_arch(model)
    keep = top_channels(hidden_importance(model, arch, kind="magnitude"), 40)
    drop = torch.ones(64, dtype=torch.bool)
    drop[keep] = False
    with torch.no_grad():
        arch.embed.weight[:, drop] = 0
        for b in arch.blocks:
            b.attn.o.weight[drop] = 0
            b.mlp.down.weight[drop] = 0
    ids = torch.randint(0, 256, (2, 9))
    pruned = prune_hidden(model, arch, keep)
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    assert pruned.config.hidden_size == 40 and arch.hidden_size == 64  # the source model is unchanged
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    act = hidden_importance(model, arch, batches, kind="activation")
    assert act.shape == (64,) and torch.all(act[drop] < 1e-6) and torch.all(act[keep] > 0)


@pytest.mark.slow
def test_smollm2_pruned_export_equals_masked_model(tmp_path, monkeypatch):
    """SmolLM2-135M (GQA 9/3, tied): 576 -> 432 hidden, 134.5M -> 100.9M parameters, same logits.

    In fp32 the two computations differ by rounding only (~1e-4 relative: 30 layers, activations
    up to ~1e4); in fp64, with the RMSNorm's internal fp32 cast removed, they agree to ~1e-12.
    """
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    from sparsetune.jobs.config import compose_job as compose
    from sparsetune.methods import build_method
    from sparsetune.models import load_model

    torch.manual_seed(0)
    cfg = compose(["model=smollm2_135m", "method=pat", "method.dropout=0.0"])
    model, tok = load_model(cfg.model)
    model = model.float()
    pat = build_method(cfg.method)
    model = pat.apply(model, MethodContext.of(model))
    batch = tok(["The capital of France is Paris. The capital of Italy is", "def add(a, b):\n    return"],
                return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(pat.parameter_groups(model, 1e-3, 0.0))
    for step in range(2):
        out = model(**batch, labels=batch["input_ids"])
        (out.loss + sum(pat.extra_loss(model, batch, out).values())).backward()
        opt.step()
        opt.zero_grad()
        pat.on_step(step + 1, 30)
    model.eval()
    with torch.no_grad():
        masked = model(**batch).logits
    pat.export(model, tmp_path / "pruned", tokenizer=tok)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32).eval()
    with torch.no_grad():
        got = reloaded(**batch).logits
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], masked[keep], rtol=1e-3, atol=2e-2)
    assert reloaded.config.hidden_size == 432 and reloaded.config.tie_word_embeddings
    assert pat.metrics()["params_before"] == 134_515_008
    assert sum(p.numel() for p in reloaded.parameters()) == pat.metrics()["params_after"] == 100_886_256

    def norm64(self, h):  # LlamaRMSNorm without its float32 round trip
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", norm64)
    model.double()
    with torch.no_grad():
        masked64 = model(**batch).logits
        got64 = pat.prepare_for_eval(model)(**batch).logits
    torch.testing.assert_close(got64[keep], masked64[keep], rtol=1e-9, atol=1e-9)
