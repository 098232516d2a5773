"""`sparsetune bench pat`: variant layout and what each variant measures (tiny model, no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

from sparsetune.bench import build_benchmark, run_benchmark
from sparsetune.jobs.config import compose_job as compose

QUICK = {"batch": 2, "seq": 16, "new_tokens": 4, "warmup": 0, "iters": 1, "gen_iters": 1}


def test_variants_are_dense_and_three_pat_ratios():
    bench = build_benchmark("pat", quick=True, overrides=["trainer.threads=1"])
    assert [v.name for v in bench.variants] == ["dense", "pruned_20", "pruned_25", "pruned_30"]
    assert bench.baseline == "dense"
    for metric in ("prefill_time_s", "prefill_cpu_s", "prefill_tokens_per_s", "decode_tokens_per_s", "params", "peak_memory_mb"):
        assert metric in bench.ratio_metrics
    for variant, ratio in zip(bench.variants[1:], (0.2, 0.25, 0.3)):
        cfg = compose(variant.overrides)
        assert cfg.method.name == "pat" and cfg.method.prune_ratio == ratio and cfg.model.name == "tiny_llama"
    assert compose(bench.variants[0].overrides).trainer.threads == 1
    full = build_benchmark("pat", quick=False, overrides=[])
    assert full.settings[0].params["batch"] == 8 and full.settings[0].params["seq"] == 128
    assert full.settings[0].params["new_tokens"] == 64
    assert compose(full.variants[2].overrides).model.name == "smollm2_135m"


@pytest.mark.parametrize("ratio,hidden,params", [(None, 64, 106_816), (0.2, 52, 106_816 - 12 * 1669),
                                                 (0.25, 48, 106_816 - 16 * 1669), (0.3, 44, 106_816 - 20 * 1669)])
def test_measure_prunes_to_pat_shapes_and_reports_every_metric(ratio, hidden, params):
    from sparsetune.bench.pat import measure_inference

    torch.set_num_threads(1)
    overrides = ["model=tiny_llama", "logger=quiet", "trainer.threads=1"]
    overrides += ["method=full"] if ratio is None else ["method=pat", f"method.prune_ratio={ratio}"]
    out = measure_inference(compose(overrides), QUICK)
    json.dumps(out)  # one JSON line on the worker's stdout
    # Llama needs hidden % heads == 0: 51.2 -> 52, 48, 44.8 -> 44 (the counts PAT's export keeps)
    assert out["hidden_size"] == hidden and out["params"] == params
    assert out["block_params"] < out["params"] and out["weights_mb"] == pytest.approx(params * 4 / 2**20)
    for key in ("prefill_time_s", "prefill_cpu_s", "prefill_tokens_per_s", "decode_tokens_per_s", "generate_time_s",
                "peak_memory_mb"):
        assert out[key] > 0, key
    assert out["prefill_tokens_per_s"] == pytest.approx(2 * 16 / out["prefill_time_s"])


@pytest.mark.slow
def test_quick_benchmark_runs_each_variant_in_its_own_process(tmp_path):
    out = tmp_path / "bench.json"
    run_benchmark("pat", quick=True, out=str(out), overrides=["trainer.threads=1"], rounds=2)
    block = json.loads(out.read_text())["blocks"]["2x32"]
    variants = block["variants"]
    assert list(variants) == ["dense", "pruned_20", "pruned_25", "pruned_30"]
    for name, v in variants.items():
        assert "error" not in v, (name, v)
    assert variants["pruned_25"]["params_vs_dense"] == pytest.approx(variants["pruned_25"]["params"] / 106_816)
    assert variants["dense"]["prefill_tokens_per_s_vs_dense"] == 1.0
    assert len(variants["pruned_25"]["rounds"]) == 2 and len(variants["pruned_25"]["prefill_time_s_vs_dense_range"]) == 2


def test_round_to_gives_aligned_widths_on_models_that_accept_any_width():
    """`method.round_to` (here 16, a CPU vector width) sets the benchmarked width, as it sets PAT's export."""
    from sparsetune.bench.pat import measure_inference

    torch.set_num_threads(1)
    overrides = ["model=tiny_qwen2", "logger=quiet", "trainer.threads=1", "method=pat", "method.prune_ratio=0.3"]
    assert measure_inference(compose(overrides), QUICK)["hidden_size"] == 45  # 64 * 0.7 = 44.8, Qwen2: any width
    assert measure_inference(compose([*overrides, "method.round_to=16"]), QUICK)["hidden_size"] == 48


def test_cpu_profile_splits_the_forward_into_projections_and_the_rest():
    from sparsetune.diagnose.pat_profile import gemm_rates, profile_ops

    table = profile_ops(widths=(48, 44), rounds=1, batch=2, seq=8, model="tiny_llama")
    assert list(table) == ["64", "48", "44"]
    for ops in table.values():
        linears = [ops[k] for k in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
        assert all(v > 0 for v in linears) and ops["rest"] >= 0
        assert ops["total"] == pytest.approx(sum(v for k, v in ops.items() if k != "total"), rel=1e-6)
    rates = gemm_rates(widths=(64, 40), tokens=16, reps=1, inner=1)
    assert set(rates) == {64, 40} and all(v > 0 for row in rates.values() for v in row.values())
