"""`sparsetune bench spt` / `spt_model`: variant layout at the issue's shapes, the saved-activation
counter, and what each measurement reports (tiny shapes, no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

from sparsetune.bench import build_benchmark
from sparsetune.bench.spt import measure_block, measure_model, saved_mb
from sparsetune.jobs.config import compose_job as compose

TINY_BLOCK = {"hidden": 64, "heads": 4, "ffn": 128, "batch": 2, "seq": 48, "warmup": 0, "steps": 1}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_block_benchmark_has_the_issue_shape_and_four_variants():
    bench = build_benchmark("spt", quick=False, overrides=["trainer.threads=1"])
    assert [v.name for v in bench.variants] == ["full", "lora_eager", "lora_sdpa", "spt", "spt_block", "spt_block_attn"]
    assert bench.baseline == "lora_eager" and ("spt", "lora_sdpa") in bench.extra_ratios
    assert ("spt_block", "spt") in bench.extra_ratios
    assert [s.params["seq"] for s in bench.settings] == [512, 1024]
    for s in bench.settings:
        assert (s.params["hidden"], s.params["heads"], s.params["ffn"], s.params["batch"]) == (1024, 16, 2816, 4)
    cfgs = {v.name: compose(v.overrides) for v in bench.variants
            if v.name in ("spt", "spt_block", "spt_block_attn", "lora_sdpa")}
    assert cfgs["spt_block"].method.routed_ffn and not cfgs["spt_block_attn"].method.routed_ffn
    assert cfgs["spt"].method.name == "spt" and cfgs["spt"].method.warmup_ratio == 0.0  # sparse from step 1
    assert cfgs["spt"].method.attention_selection == "per_key"
    assert cfgs["spt_block"].method.attention_selection == "block" and cfgs["spt_block"].method.key_block == 32
    assert cfgs["lora_sdpa"].model.attn_implementation == "sdpa" and cfgs["lora_sdpa"].method.r == 16
    assert "model.attn_implementation=eager" in bench.variants[1].overrides
    assert "saved_activation_mb" in bench.ratio_metrics


def test_model_benchmark_is_whole_smollm2_at_1024():
    bench = build_benchmark("spt_model", quick=False, overrides=[])
    assert [v.name for v in bench.variants] == ["lora_sdpa", "lora_eager", "spt", "spt_block", "spt_block_attn"]
    assert bench.baseline == "lora_sdpa"
    (setting,) = bench.settings
    assert setting.params["seq"] == 1024 and setting.params["batch"] == 1
    cfg = compose(bench.variants[2].overrides)
    assert cfg.model.name == "smollm2_135m_shape" and cfg.method.name == "spt"
    assert "saved_activation_mb" in bench.ratio_metrics


def test_saved_mb_counts_each_saved_storage_once_and_skips_parameters():
    w = torch.nn.Parameter(torch.ones(2**18))  # 1 MB of fp32
    model = torch.nn.Module()
    model.w = w
    x = torch.randn(2**18, requires_grad=True)
    # x * w saves x (1 MB) and w (a parameter: excluded); (x*w) * x saves x again (counted once) and x*w
    assert saved_mb(model, lambda: (x * w * x).sum()) == pytest.approx(2.0)
    assert w.grad is None  # backward ran and the gradients were cleared


@pytest.mark.parametrize("overrides", [["method=spt", "method.warmup_ratio=0.0", "method.kmeans_init=false",
                                        "method.min_keys=4", "model.attn_implementation=sdpa"],
                                       ["method=full", "model.attn_implementation=eager"]])
def test_measure_block_reports_every_metric(overrides):
    out = measure_block(compose(["logger=quiet", "trainer.threads=1", *overrides]), TINY_BLOCK)
    json.dumps(out)  # one JSON line on the worker's stdout
    for key in ("step_time_s", "peak_memory_mb", "saved_activation_mb", "attn_saved_mb", "ffn_saved_mb",
                "attn_time_s", "ffn_time_s"):
        assert out[key] > 0, key
    assert out["attn_saved_mb"] < out["saved_activation_mb"]
    assert 0 <= out["step_memory_mb"] <= out["peak_memory_mb"]


def test_measure_model_runs_spt_sparse_and_saves_less_than_eager_lora():
    settings = {"batch": 1, "seq": 256, "warmup": 0, "steps": 1}
    common = ["model=tiny_llama", "logger=quiet", "trainer.threads=1"]
    spt = measure_model(compose([*common, "method=spt", "method.warmup_ratio=0.0", "method.kmeans_init=false",
                                 "method.min_keys=4", "method.codebook_tokens=64"]), settings)
    lora = measure_model(compose([*common, "method=lora", "model.attn_implementation=eager"]), settings)
    for out in (spt, lora):
        assert out["step_time_s"] > 0 and out["saved_mb_per_layer"] == pytest.approx(out["saved_activation_mb"] / 2)
    # eager attention keeps (heads x S x S) probabilities per layer; the sparse path keeps S x L indices
    assert spt["saved_activation_mb"] < lora["saved_activation_mb"]


def test_probe_oracle_drops_the_block_that_contributes_nothing_and_unit_routing_has_unit_gates():
    from sparsetune.diagnose.spt_probe import oracle_blocks, set_routing, summarise
    from sparsetune.methods.base import MethodContext
    from sparsetune.methods.spt import SPT, SPTConfig
    from sparsetune.models.tiny import tiny_preset

    model = tiny_preset("llama", 0).eval()  # FFN width 128: 4 blocks of 32
    method = SPT(SPTConfig(sparse_attention=False, ffn_top_k=3, warmup_ratio=0.0))
    method.apply(model, MethodContext.of(model))
    mlp = method.ffn[0]
    with torch.no_grad():
        mlp.mlp.down_proj.base.weight[:, 64:96] = 0  # block 2 adds nothing
    x = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    assert (oracle_blocks(mlp.mlp, x, 4, 3).sort(-1).values == torch.tensor([0, 1, 3])).all()
    assert (oracle_blocks(mlp.mlp, x, 4, 4).sort(-1).values == torch.arange(4)).all()
    want = mlp.route(x)[0]
    set_routing(method, "unit")
    top, gates = mlp.route(x)
    assert torch.equal(top, want) and torch.equal(gates, torch.ones(10, 3))
    stats: dict = {}
    set_routing(method, "oracle", stats)
    mlp.route(x)
    assert summarise(stats) == ["oracle relative output error per layer: 0:0.00"]  # block 2 was empty
