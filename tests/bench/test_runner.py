"""The benchmark runner: one process per variant, ratios against the baseline, JSON layout."""

from __future__ import annotations

import json

import pytest

from sparsetune.bench import run_benchmark
from sparsetune.errors import UserError


def test_quick_lora_benchmark_layout_and_ratios(tmp_path):
    out = tmp_path / "bench.json"
    run_benchmark("lora", quick=True, out=str(out), overrides=["trainer.threads=1"], rounds=1)
    data = json.loads(out.read_text())
    assert data["device"]["device"] == "cpu"
    block = data["blocks"]["4x128"]
    assert block["baseline"] == "full"
    assert block["settings"]["batch"] == 4 and block["settings"]["seq"] == 128
    full, lora, dora = (block["variants"][k] for k in ("full", "lora", "dora"))
    for v in (full, lora, dora):
        assert "error" not in v, v
        assert v["step_time_s"] > 0 and v["peak_memory_mb"] > 0
    assert lora["step_time_s_vs_full"] == pytest.approx(lora["step_time_s"] / full["step_time_s"])
    assert lora["trainable_params"] < full["trainable_params"] == full["total_params"]
    assert dora["trainable_params"] > lora["trainable_params"]  # DoRA adds a magnitude vector


def test_unknown_benchmark():
    with pytest.raises(UserError, match="unknown benchmark 'nope'; available: .*lora"):
        run_benchmark("nope")


def test_variants_option_keeps_the_named_ones_and_the_baseline():
    from sparsetune.bench.registry import build_benchmark
    from sparsetune.bench.runner import only_variants

    bench = build_benchmark("spt", quick=True, overrides=[])
    only = only_variants(bench, ["spt_block"])
    assert [v.name for v in only.variants] == ["lora_eager", "spt_block"]
    assert only.extra_ratios == [] and only.settings == bench.settings
    both = only_variants(bench, ["spt_block", "spt"])
    assert ("spt_block", "spt") in both.extra_ratios and ("spt", "lora_sdpa") not in both.extra_ratios
    with pytest.raises(UserError, match="spt_blok"):
        only_variants(bench, ["spt_blok"])
