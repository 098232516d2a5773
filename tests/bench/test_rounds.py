"""Alternating rounds: round-robin order, per-round ratios, medians and spread, `bench --list`
(a fake measurement stands in for the worker process: no model is loaded)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from typer.testing import CliRunner

from sparsetune.bench import list_benchmarks, registry, run_benchmark
from sparsetune.bench.runner import Benchmark, Setting, Variant, format_ratio, median_metrics, ratio_stats
from sparsetune.cli import app

# time_s per (variant, round): the machine gets slower each round, B is always about half of A
TIMES = {"A": [1.0, 2.0, 4.0], "B": [0.5, 1.2, 1.6], "C": [2.0, 4.0, 8.0]}


@pytest.fixture
def fake_bench(monkeypatch):
    mod = types.ModuleType("fake_bench_module")

    def benchmark(quick, overrides):
        return Benchmark(name="fake", variants=[Variant(n, "unused:fn", overrides) for n in ("A", "B", "C")],
                         settings=[Setting("s1", {"batch": 1})], baseline="A", ratio_metrics=["time_s", "params"],
                         extra_ratios=[("B", "C")])

    mod.benchmark = benchmark
    monkeypatch.setitem(sys.modules, "fake_bench_module", mod)
    monkeypatch.setitem(registry.BENCHMARKS, "fake", "fake_bench_module")
    calls: list[str] = []

    def run_variant(variant, setting, timeout):
        r = sum(1 for c in calls if c == variant.name)
        calls.append(variant.name)
        return {"time_s": TIMES[variant.name][r], "params": 100 if variant.name == "A" else 50, "dtype": "float32"}

    return run_variant, calls


def test_variants_alternate_round_robin(fake_bench):
    run_variant, calls = fake_bench
    run_benchmark("fake", rounds=3, run_variant=run_variant)
    assert calls == ["A", "B", "C"] * 3


def test_medians_and_per_round_ratio_spread(fake_bench, tmp_path):
    run_variant, _ = fake_bench
    out = tmp_path / "r.json"
    run_benchmark("fake", rounds=3, out=str(out), run_variant=run_variant)
    data = json.loads(out.read_text())
    assert data["n_rounds"] == 3
    block = data["blocks"]["s1"]
    assert block["baseline"] == "A" and block["settings"] == {"batch": 1}
    a, b, c = (block["variants"][k] for k in "ABC")
    assert a["time_s"] == 2.0 and b["time_s"] == 1.2 and c["time_s"] == 4.0  # per-metric medians
    assert a["params"] == 100 and isinstance(a["params"], int) and a["dtype"] == "float32"
    # ratios round by round: 0.5, 0.6, 0.4 -> median 0.5, spread 0.4-0.6 (not 1.2 / 2.0 = 0.6 of the medians)
    assert b["time_s_vs_A"] == pytest.approx(0.5)
    assert b["time_s_vs_A_range"] == pytest.approx([0.4, 0.6])
    assert c["time_s_vs_A"] == 2.0 and c["time_s_vs_A_range"] == [2.0, 2.0]
    assert a["time_s_vs_A"] == 1.0
    assert b["params_vs_A"] == 0.5 and b["params_vs_A_range"] == [0.5, 0.5]
    # extra ratio B / C, same round: 0.25, 0.3, 0.2
    assert b["time_s_vs_C"] == pytest.approx(0.25) and b["time_s_vs_C_range"] == pytest.approx([0.2, 0.3])
    assert [r["time_s"] for r in b["rounds"]] == TIMES["B"]  # raw per-round values kept


def test_failed_rounds_are_left_out_of_medians_and_ratios():
    ok = [{"t": 1.0}, {"error": "boom"}, {"t": 3.0}]
    assert median_metrics(ok) == {"t": 2.0, "errors": ["boom"]}
    assert median_metrics([{"error": "x"}, {"error": "y"}]) == {"error": "x"}
    base = [{"t": 2.0}, {"t": 2.0}, {"t": 0.0}]
    median, spread, per_round = ratio_stats(ok, base, "t")
    assert per_round == [0.5, None, None] and median == 0.5 and spread == [0.5, 0.5]
    assert ratio_stats([{"error": "x"}], [{"t": 1.0}], "t") is None


def test_ratio_text_has_median_and_spread():
    assert format_ratio(0.66, [0.62, 0.70]) == "0.66× (0.62–0.70)"
    assert format_ratio(1.0, [1.0, 1.0]) == "1.00×"


def test_table_shows_median_ratio_with_spread(fake_bench, capsys):
    run_variant, _ = fake_bench
    run_benchmark("fake", rounds=3, run_variant=run_variant)
    printed = capsys.readouterr().out
    assert "0.50× (0.40–0.60)" in printed and "_range" not in printed


def test_rounds_must_be_positive(fake_bench):
    from sparsetune.errors import UserError

    with pytest.raises(UserError, match="at least 1"):
        run_benchmark("fake", rounds=0, run_variant=fake_bench[0])


def test_bench_list_and_missing_name():
    names = [n for n, _ in list_benchmarks()]
    assert names == sorted(registry.BENCHMARKS) and "spt_model" in names
    assert all(desc and "\n" not in desc for _, desc in list_benchmarks())
    result = CliRunner().invoke(app, ["bench", "--list"])
    assert result.exit_code == 0, result.output
    for name in ("lora", "pat", "s2ft"):
        assert name in result.output
    assert "PAT-pruned" in result.output


def test_bench_without_name_is_a_one_line_usage_error():
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "sparsetune.cli", "bench"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing benchmark NAME" in proc.stderr
