"""EViT on stock HF ViT and DeiT: keep 1.0 is the stock model, token counts follow ceil(keep·n) (+1 fused),
the fused token is the class-attention-weighted sum, batches equal their rows, the separately computed
class-attention row equals the stock attention's, training anneals the keep rate, export round-trips."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

from sparsetune.errors import ConfigError
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.methods.evit.config import EViTConfig, default_reorg_layers
from sparsetune.methods.evit.flops import Geometry, macs, token_schedule
from sparsetune.methods.evit.layers import cls_attention, is_patched, reorganize
from sparsetune.methods.evit.method import cosine_keep_rate

torch.set_num_threads(1)

SMALL = dict(image_size=28, patch_size=7, num_channels=1, hidden_size=32, intermediate_size=64,
             num_hidden_layers=4, num_attention_heads=4, num_labels=10, hidden_dropout_prob=0.0,
             attention_probs_dropout_prob=0.0)
# DeiT-S token geometry (224 px, patch 16: 196 patches, 12 blocks), small widths for speed
DEIT_S_TOKENS = dict(SMALL, image_size=224, patch_size=16, num_channels=3, num_hidden_layers=12,
                     hidden_size=24, intermediate_size=48, num_attention_heads=2)
CLASSES = {
    "vit": (ViTConfig, ViTForImageClassification, 1),
    "deit": (DeiTConfig, DeiTForImageClassification, 2),
    "deit_teacher": (DeiTConfig, DeiTForImageClassificationWithTeacher, 2),
}


def build(kind: str, attn: str = "sdpa", seed: int = 0, **geometry):
    config_cls, model_cls, _ = CLASSES[kind]
    torch.manual_seed(seed)
    config = config_cls(**(geometry or SMALL))
    config._attn_implementation = attn
    return model_cls(config).eval()


def pixels(model, batch: int = 3, seed: int = 1) -> torch.Tensor:
    c = model.config
    return torch.randn(batch, c.num_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))


def evit(model, **cfg):
    method = build_method(EViTConfig(**cfg))
    return method, method.apply(model, MethodContext.of(model))


def logits(model, x):
    with torch.inference_mode():
        out = model(pixel_values=x)
    return out.logits


def layers_of(model):
    base = model.vit if hasattr(model, "vit") else model.deit
    return base.layers


def token_counts(model, x, num_special: int) -> list[int]:
    """Non-special tokens leaving each layer."""
    seen: list[int] = []
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.append(out.shape[1] - num_special))
             for layer in layers_of(model)]
    try:
        logits(model, x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def mlp_inputs(model, layer: int, x) -> torch.Tensor:
    """What enters `layer`'s MLP layernorm: the hidden states after attention (and reorganisation)."""
    got = {}
    hook = layers_of(model)[layer].layernorm_after.register_forward_pre_hook(lambda m, a: got.setdefault("x", a[0]))
    try:
        logits(model, x)
    finally:
        hook.remove()
    return got["x"]


# --------------------------------------------------------------------------- keep 1.0 is the stock model
@pytest.mark.parametrize("kind", list(CLASSES))
def test_keep_rate_one_gives_the_stock_logits_exactly(kind):
    stock = build(kind)
    x = pixels(stock)
    expected = logits(stock, x)
    _, patched = evit(copy.deepcopy(stock), keep_rate=1.0)
    assert sum(is_patched(m) for m in patched.modules()) == 3
    assert torch.equal(logits(patched, x), expected)
    if kind == "deit_teacher":  # both heads, distillation token included
        with torch.inference_mode():
            a, b = stock(pixel_values=x), patched(pixel_values=x)
        assert torch.equal(a.cls_logits, b.cls_logits) and torch.equal(a.distillation_logits, b.distillation_logits)


def test_reorganisation_changes_the_output_and_removing_the_patch_restores_it():
    stock = build("vit")
    x = pixels(stock)
    method, patched = evit(copy.deepcopy(stock), keep_rate=0.5)
    assert not torch.allclose(logits(patched, x), logits(stock, x))
    method.remove(patched)
    assert not any(is_patched(m) for m in patched.modules())
    assert torch.equal(logits(patched, x), logits(stock, x))


def test_attention_maps_are_refused_while_reorganising_never_a_short_tuple():
    stock = build("vit", attn="eager")
    x = pixels(stock)
    with torch.inference_mode():
        expected = len(stock(pixel_values=x, output_attentions=True).attentions)
    method, patched = evit(copy.deepcopy(stock), keep_rate=0.7)
    with pytest.raises(ConfigError, match="cannot return attention maps"), torch.inference_mode():
        patched(pixel_values=x, output_attentions=True)
    method.settings.keep_rate = 1.0  # the stock path: every layer's map comes back
    with torch.inference_mode():
        assert len(patched(pixel_values=x, output_attentions=True).attentions) == expected
    method.remove(patched)
    with torch.inference_mode():
        assert len(patched(pixel_values=x, output_attentions=True).attentions) == expected


# --------------------------------------------------------------------------- token counts
@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
def test_deit_s_shape_keep_07_token_counts(kind):
    model = build(kind, **DEIT_S_TOKENS)
    method, model = evit(model, keep_rate=0.7)
    assert method.reorg_layers == [3, 6, 9]
    special = CLASSES[kind][2]
    counts = token_counts(model, pixels(model, batch=2), special)
    assert counts == [196] * 3 + [139] * 3 + [99] * 3 + [71] * 3  # fused token included
    assert method.tokens() == [196, 139, 99, 71]


def test_drop_instead_of_fuse_token_counts():
    model = build("deit", **DEIT_S_TOKENS)
    method, model = evit(model, keep_rate=0.7, fuse=False)
    counts = token_counts(model, pixels(model, batch=1), 2)
    assert counts == [196] * 3 + [138] * 3 + [97] * 3 + [68] * 3
    assert method.tokens() == [196, 138, 97, 68]


def test_default_layers_scale_with_depth_and_ceil_is_float_safe():
    assert default_reorg_layers(12) == [3, 6, 9]
    assert default_reorg_layers(4) == [1, 2, 3]
    assert default_reorg_layers(24) == [6, 12, 18]
    # 0.7 · 100 is 70.00000000000001 in floats: still 70 kept, plus the fused token
    assert token_schedule(100, 1, [0], 0.7) == [(100, 71)]


# --------------------------------------------------------------------------- fusion and the class row
@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_fused_token_and_class_row_equal_a_hand_computation_from_the_stock_attention(kind, renormalize):
    stock = build(kind, attn="eager")
    special = CLASSES[kind][2]
    x = pixels(stock, batch=2)
    layer, keep = 1, 0.6  # the first reorganising block of a 4-block model
    with torch.inference_mode():
        attentions = stock(pixel_values=x, output_attentions=True).attentions[layer]  # (B, H, N, N)
    post_attention = mlp_inputs(stock, layer, x)  # stock: hidden states after the attention residual

    patched = build(kind, attn="sdpa")
    patched.load_state_dict(stock.state_dict())
    method, patched = evit(patched, keep_rate=keep, renormalize=renormalize)
    method.settings.record = True
    got = mlp_inputs(patched, layer, x)
    record = layers_of(patched)[layer].evit_last

    # the class row, computed on its own, equals the stock attention's (averaged over heads)
    stock_row = attentions[:, :, 0, :].mean(dim=1)
    torch.testing.assert_close(record["cls_attn"], stock_row, rtol=1e-5, atol=1e-6)

    n = post_attention.shape[1] - special
    k = math.ceil(keep * n)
    for b in range(x.shape[0]):
        scores = stock_row[b, special:]
        order = sorted(range(n), key=lambda i: -float(scores[i]))
        kept, dropped = order[:k], order[k:]
        assert sorted(record["kept"][b].tolist()) == sorted(kept)
        total = sum(float(scores[i]) for i in dropped) if renormalize else 1.0
        fused = sum(float(scores[i]) / total * post_attention[b, special + i] for i in dropped)
        expected = torch.cat([post_attention[b, :special], post_attention[b, [special + i for i in kept]],
                              fused.unsqueeze(0)])
        torch.testing.assert_close(got[b], expected, rtol=1e-5, atol=1e-5)
    assert got.shape[1] == special + k + 1


def test_reorganize_unit():
    hidden = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    attn = torch.tensor([[0.5, 0.12, 0.05, 0.2, 0.1, 0.03], [0.4, 0.3, 0.1, 0.06, 0.11, 0.03]])
    out, idx = reorganize(hidden, attn, keep_rate=0.4, num_special=1)  # 5 tokens → 2 kept + 1 fused
    assert idx.tolist() == [[2, 0], [0, 3]]  # positions among the non-special tokens, best first
    fused0 = 0.05 * hidden[0, 2] + 0.1 * hidden[0, 4] + 0.03 * hidden[0, 5]
    torch.testing.assert_close(out[0], torch.stack([hidden[0, 0], hidden[0, 3], hidden[0, 1], fused0]))
    dropped, _ = reorganize(hidden, attn, keep_rate=0.4, num_special=1, fuse=False)
    assert torch.equal(dropped, out[:, :3])


def test_class_row_helper_matches_explicit_softmax():
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    full = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1)
    torch.testing.assert_close(cls_attention(q, k, 0.5), full[:, :, 0].mean(1))


# --------------------------------------------------------------------------- batching, dtypes, modes
@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
def test_a_batch_equals_its_rows_one_at_a_time(kind):
    _, model = evit(build(kind, **DEIT_S_TOKENS), keep_rate=0.7)
    x = pixels(model, batch=4)
    batch = logits(model, x)
    rows = torch.cat([logits(model, x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, rows, rtol=1e-5, atol=1e-5)


def test_bf16_inference_mode():
    stock = build("deit_teacher").to(torch.bfloat16)
    x = pixels(stock).to(torch.bfloat16)
    expected = logits(stock, x)
    method, patched = evit(copy.deepcopy(stock), keep_rate=1.0)
    assert torch.equal(logits(patched, x), expected)
    method.settings.keep_rate = 0.5
    out = logits(patched, x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert token_counts(patched, x, 2) == [16, 9, 6, 4]  # 16 → 8+1 → 5+1 → 3+1


def test_training_anneals_the_keep_rate_and_gradients_reach_every_weight():
    method, model = evit(build("vit"), keep_rate=0.5, anneal_start=0.1, anneal_end=0.6)
    assert all(p.requires_grad for p in model.parameters())
    assert cosine_keep_rate(0.0, 0.5, 0.1, 0.6) == 1.0 and cosine_keep_rate(0.35, 0.5, 0.1, 0.6) == pytest.approx(0.75)
    assert cosine_keep_rate(0.6, 0.5, 0.1, 0.6) == 0.5 and cosine_keep_rate(0.3, 0.5, 0.0, 0.0) == 0.5
    x = pixels(model, batch=2)
    model.train()
    assert token_counts(model, x, 1)[1:] == [16, 16, 16]  # step 0: keep 1.0 in training
    assert method.metrics()["evit_keep_rate"] == 1.0
    rates = []
    for step in range(1, 11):
        method.on_step(step, 10)
        rates.append(method.metrics()["evit_keep_rate"])
    assert rates == sorted(rates, reverse=True) and rates[-1] == 0.5 and rates[0] == 1.0
    model.train()
    assert token_counts(model, x, 1)[1:] == [9, 6, 4]
    model.zero_grad()
    model(pixel_values=x, labels=torch.tensor([1, 2])).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()  # evaluation always uses the target keep rate
    assert token_counts(model, x, 1)[1:] == [9, 6, 4]


def test_off_the_shelf_freezes_everything_and_refuses_to_train():
    method, model = evit(build("vit"), keep_rate=0.7, train=False)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="method.train=false"):
        method.parameter_groups(model, 1e-3, 0.0)


def test_unsupported_architecture_and_bad_values_fail_with_one_line():
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=32))
    with pytest.raises(ConfigError, match="ViT and DeiT"):
        evit(llama)
    with pytest.raises(ConfigError, match="keep rate"):
        build_method(EViTConfig(keep_rate=0.0))
    with pytest.raises(ConfigError, match="out of range"):
        evit(build("vit"), reorg_layers=[7])


# --------------------------------------------------------------------------- export, eval points, MACs
@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
def test_export_is_a_stock_folder_and_load_export_reapplies_the_settings(kind, tmp_path):
    method, model = evit(build(kind), keep_rate=0.6, reorg_layers=[1, 3])
    x = pixels(model)
    expected = logits(model, x)
    method.export(model, tmp_path)
    saved = json.loads((tmp_path / "evit.json").read_text())
    assert saved["keep_rate"] == 0.6 and saved["reorg_layers"] == [1, 3] and saved["fuse"] is True
    stock_cls = CLASSES[kind][1]
    plain = stock_cls.from_pretrained(tmp_path)  # an ordinary HF folder
    assert not any(is_patched(m) for m in plain.modules())
    fresh = build_method(EViTConfig())  # default settings: the folder's evit.json wins
    loaded = fresh.load_export(build(kind, seed=5), tmp_path)
    assert fresh.reorg_layers == [1, 3] and fresh.settings.keep_rate == 0.6
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(logits(loaded, x), expected)


def test_eval_points_switch_keep_rates_and_report_gmacs():
    method, model = evit(build("deit", **DEIT_S_TOKENS), keep_rate=0.7, eval_keep_rates=[1.0, 0.7])
    points = method.eval_points([])
    assert [label for label, _ in points] == ["keep 1", "keep 0.7"]
    assert [label for label, _ in method.eval_points([0.5])] == ["keep 0.5"]
    x = pixels(model, batch=1)
    figures = method.set_eval_point(model, points[0][1])
    assert figures["keep_rate"] == 1.0 and token_counts(model, x, 2)[-1] == 196
    figures = method.set_eval_point(model, points[1][1])
    assert figures["tokens"] == "196→139→99→71" and token_counts(model, x, 2)[-1] == 71
    with pytest.raises(ConfigError):
        method.eval_points([1.5])


def test_deit_s_gmacs_match_the_paper():
    config = DeiTConfig(image_size=224, patch_size=16, hidden_size=384, intermediate_size=1536,
                        num_hidden_layers=12, num_attention_heads=6)
    geo = Geometry.from_config(config, num_special=2)
    stock = macs(geo, [3, 6, 9], 1.0) / 1e9
    assert stock == pytest.approx(4.6, abs=0.05)
    # the paper's table: 4.0 / 3.5 / 3.0 / 2.6 / 2.3 GMACs at keep 0.9 … 0.5
    got = [round(macs(geo, [3, 6, 9], k) / 1e9, 1) for k in (0.9, 0.8, 0.7, 0.6, 0.5)]
    assert got == pytest.approx([4.0, 3.5, 3.0, 2.6, 2.3], abs=0.11)


# --------------------------------------------------------------------------- through the jobs and the bench
TINY_JOB = ["model=tiny_vit", "data=digits", "method=evit", "logger=quiet", "trainer.threads=1",
            "trainer.batch_size=16", "trainer.warmup_steps=1", "trainer.save_every=0", "eval.batch_size=64"]


def test_train_exports_and_eval_run_scores_keep_rates(tmp_path):
    from sparsetune.jobs import run_job
    from sparsetune.jobs.config import compose_job as compose
    from sparsetune.jobs.evaluate import evaluate_run

    ov = [*TINY_JOB, f"run_dir={tmp_path}", "trainer.max_steps=4", "method.keep_rate=0.5",
          "method.anneal_end=0.5"]
    summary = run_job(compose(ov), ov)
    run = next(tmp_path.iterdir())
    assert summary["evit_keep_rate"] == 0.5 and summary["gmacs"] < summary["gmacs_stock"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["evit_keep_rate"] for r in records if "loss" in r]
    assert rates[0] > rates[-1] == 0.5  # annealed from 1.0 towards the target
    assert json.loads((run / "export" / "evit.json").read_text())["keep_rate"] == 0.5

    results = evaluate_run(str(run), ["eval.points=[1.0,0.5]"])
    assert results["digits"]["n"] == 360
    saved = json.loads((run / "summary.json").read_text())
    rows = saved["eval_points"]
    assert list(rows) == ["keep 1", "keep 0.5"] and rows["keep 0.5"]["tokens"] == "16→9"
    assert all(r["images_per_s"] > 0 and 0 <= r["top1"] <= 1 for r in rows.values())
    # the export was scored at its own keep rate: the plain eval equals the keep-0.5 point
    assert rows["keep 0.5"]["top1"] == results["digits"]["top1"]
    assert (run / "eval_points.json").exists() and (run / "eval_points.png").stat().st_size > 0


def test_eval_recipe_points_from_the_method_config(tmp_path):
    from sparsetune.jobs.config import compose_job as compose
    from sparsetune.jobs.evaluate import evaluate_recipe

    ov = [*TINY_JOB, f"run_dir={tmp_path}", "method.train=false", "method.eval_keep_rates=[1.0,0.7]"]
    evaluate_recipe(compose(ov), ov)
    run = next(tmp_path.iterdir())
    record = json.loads((run / "eval_points.json").read_text())
    assert list(record["points"]) == ["keep 1", "keep 0.7"] and record["timing"]["batch"] == 64
    assert record["points"]["keep 1"]["speedup"] == 1.0


def test_bench_measures_stock_and_keep_rates_on_a_tiny_model():
    from sparsetune.bench.evit import benchmark, measure_inference
    from sparsetune.jobs.config import compose_job as compose

    bench = benchmark(quick=True, overrides=[])
    assert [v.name for v in bench.variants] == ["stock", "keep_0.9", "keep_0.8", "keep_0.7", "keep_0.6", "keep_0.5"]
    settings = {"batch": 2, "warmup": 0, "iters": 1}
    common = ["model=tiny_vit", "data=digits", "logger=quiet"]
    stock = measure_inference(compose(["method=full", *common]), settings)
    keep = measure_inference(compose(["method=evit", "method.keep_rate=0.5", *common]), settings)
    assert stock["tokens"] == "16→16" and keep["tokens"] == "16→9"
    assert keep["gmacs"] < stock["gmacs"] and stock["images_per_s"] > 0
    assert keep["speedup_same_process"] > 0 and "speedup_same_process" not in stock


def test_default_schedule_is_the_papers_epochs_10_to_110_of_300():
    """#23 item 8: by default the keep rate is 1 through epoch 10 of 300 and the target from epoch 110."""
    method, _ = evit(build("vit"))
    total = 300
    rates = {}
    for epoch in (0, 10, 60, 110, 299):
        method.on_step(epoch, total)
        rates[epoch] = method.metrics()["evit_keep_rate"]
    assert rates[0] == rates[10] == 1.0
    assert 0.7 < rates[60] < 1.0
    assert rates[110] == rates[299] == pytest.approx(0.7)


def test_equal_anneal_bounds_are_a_step_and_an_end_before_the_start_is_refused():
    """The reference fine-tune keeps 1.0 for 10 of 30 epochs, then the target: anneal_start == anneal_end."""
    assert cosine_keep_rate(0.3, 0.7, 1 / 3, 1 / 3) == 1.0 and cosine_keep_rate(0.34, 0.7, 1 / 3, 1 / 3) == 0.7
    method, _ = evit(build("vit"), keep_rate=0.7, anneal_start=1 / 3, anneal_end=1 / 3)
    rates = []
    for step in range(30):
        method.on_step(step, 30)
        rates.append(method.metrics()["evit_keep_rate"])
    assert rates[:10] == [1.0] * 10 and rates[10:] == [pytest.approx(0.7)] * 20
    with pytest.raises(ConfigError, match="anneal_end"):
        evit(build("vit"), anneal_start=0.5, anneal_end=0.2)
