"""The reproduction plan, its skip logic and the report writer, on synthetic run folders (no training)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from repro import plan  # noqa: E402
from repro.report import aggregate, run_rows, write_report  # noqa: E402
from repro.runner import Layout, merge_overrides, run_command  # noqa: E402


def _finish(layout: Layout, run: plan.Run, seed: int, summary: dict) -> Path:
    folder = layout.run_root(run, seed) / "20261130-000000-x"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_every_table_has_rows_or_a_bench_and_every_run_a_table():
    names = {t.name for t in plan.TABLES}
    assert {r.table for r in plan.RUNS} <= names and {b.table for b in plan.BENCHES} <= names
    for table in plan.TABLES:
        assert any(r.table == table.name for r in plan.RUNS) or any(b.table == table.name for b in plan.BENCHES)
    # every accuracy row of a trained model runs at least two seeds
    for run in plan.RUNS:
        if run.argv[0] in ("train", "prune", "forget"):
            assert len(run.seeds) >= 2, run.key


def test_quick_overrides_replace_the_same_key_in_place():
    assert merge_overrides(["a=1", "b=2"], ["a=3"]) == ["a=3", "b=2"]
    spt = next(r for r in plan.RUNS if r.table == "spt")
    cmd = run_command(spt, 1, Layout(Path("results/quick"), quick=True))
    keys = [a.split("=")[0] for a in cmd]
    assert len(keys) == len(set(keys)) and "seed=1" in cmd and "trainer.max_steps=3" in cmd


def test_quick_mode_runs_one_seed_of_a_subset_and_full_mode_every_seed(tmp_path):
    quick, full = Layout(tmp_path, quick=True), Layout(tmp_path, quick=False)
    assert sum(len(quick.seeds(r)) for r in plan.RUNS) < sum(len(full.seeds(r)) for r in plan.RUNS) / 2
    for table in plan.TABLES:  # QUICK still fills every table
        assert any(quick.seeds(r) for r in plan.RUNS if r.table == table.name) or \
            any(b.table == table.name for b in plan.BENCHES)
    s2ft = next(r for r in plan.RUNS if r.table == "s2ft" and r.argv[0] == "train")
    assert any(a.startswith("eval.include_path=") and "{tasks}" not in a for a in run_command(s2ft, 0, quick))


def test_aggregate_mean_std_and_text():
    cell = aggregate([0.5, 0.7, None, float("nan")])
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.6) and cell["std"] == pytest.approx(0.1414, abs=1e-3)
    assert aggregate(["3,7", "3,7"])["text"] == "3,7"
    assert aggregate(["3,7", "1,4"])["text"] == "3,7 / 1,4"  # per seed, in seed order


def test_finished_runs_are_found_and_expanded_rows_aggregate_per_item(tmp_path):
    layout = Layout(tmp_path, quick=False)
    run = next(r for r in plan.RUNS if r.table == "gslora")
    assert layout.finished_run(run, 0) is None
    for seed, acc in ((0, 0.8), (1, 0.9)):
        _finish(layout, run, seed, {"tasks": [{"task": 1, "classes": "3,7", "acc_r": acc, "acc_f": 0.0},
                                              {"task": 2, "classes": "1,2", "acc_r": acc - 0.1, "acc_f": 0.02}]})
    assert layout.finished_run(run, 1) is not None
    rows = run_rows(layout, run)
    assert [r["row"] for r in rows] == [f"{run.name} · task 1", f"{run.name} · task 2"]
    assert rows[1]["Acc_r"]["mean"] == pytest.approx(0.75) and rows[0]["seeds"] == 2
    assert rows[0]["classes"]["text"] == "3,7"


def test_report_has_every_table_paper_figures_commands_and_a_plot(tmp_path):
    layout = Layout(tmp_path / "results", quick=False)
    for run in plan.RUNS:
        for seed in run.seeds:
            if run.table == "evit":
                points = {f"keep {k}": {"keep_rate": k, "top1": 0.8 + 0.1 * k + 0.01 * seed, "images_per_s": 100 / k}
                          for k in (1.0, 0.7, 0.5)}
                _finish(layout, run, seed, {"eval_points": points})
            elif run.table == "s2ft":
                _finish(layout, run, seed, {"eval": {"sparsetune_arithmetic": {"exact_match": 0.1 * (seed + 1)}},
                                            "trainable_params": 1000})
    bench = next(b for b in plan.BENCHES if b.table == "pat_bench")
    out_json = layout.bench_file(bench)
    out_json.parent.mkdir(parents=True)
    out_json.write_text(json.dumps({"n_rounds": 2, "device": {"device": "cpu", "threads": 2}, "blocks": {
        "8x128": {"baseline": "dense", "variants": {
            "dense": {"prefill_tokens_per_s": 100.0},
            "pat 25%": {"prefill_tokens_per_s": 121.0, "prefill_tokens_per_s_vs_dense": 1.21,
                        "prefill_tokens_per_s_vs_dense_range": [1.1, 1.31]}}}}}))
    report = write_report(layout, plan.TABLES, plan.RUNS, plan.BENCHES, tmp_path / "reports" / "REPRODUCE.md")
    text = report.read_text()
    for table in plan.TABLES:
        assert f"## {table.title}" in text and table.paper in text
    assert "| 0.150 ± 0.071 |" in text  # S²FT rows: mean ± std of 0.1 and 0.2 on arithmetic
    assert "S²FT · trained on arithmetic − LoRA r8 · trained on arithmetic, on arithmetic: **+0.000**" in text
    assert "1.21× (1.10–1.31)" in text
    assert text.index("## At a glance") < text.index(f"## {plan.TABLES[0].title}")
    assert "not run" in text  # rows without runs say so instead of disappearing
    assert "sparsetune train recipe=s2ft_llama" in text and "seed=1" in text
    assert (tmp_path / "reports" / "REPRODUCE-plots" / "evit.png").stat().st_size > 1000
    assert "](REPRODUCE-plots/evit.png)" in text
    assert (tmp_path / "reports" / "REPRODUCE-plots" / "s2ft.png").stat().st_size > 1000  # grouped bars


def test_follow_up_runs_on_the_finished_folder_until_its_key_is_in_the_summary(tmp_path, monkeypatch):
    from repro import runner

    layout = Layout(tmp_path, quick=True)
    run = next(r for r in plan.RUNS if r.then)
    calls = []

    def fake_call(args, env, log):
        calls.append(args)
        if args[0] == run.argv[0]:  # the main command makes the run folder
            _finish(layout, run, 0, {"eval": {}})
        return 0, 0.0

    monkeypatch.setattr(runner, "_call", fake_call)
    assert runner.execute(layout, [run], []) == []
    folder = layout.finished_run(run, 0)
    assert calls[0][0] == run.argv[0] and calls[1][:2] == [run.then[0], f"run={folder}"]
    calls.clear()
    runner.execute(layout, [run], [])  # summary still lacks then_key: only the follow-up reruns
    assert [c[0] for c in calls] == [run.then[0]]
    (folder / "summary.json").write_text(json.dumps({run.then_key: {}}))
    calls.clear()
    runner.execute(layout, [run], [])
    assert calls == []


def test_jobs_run_rows_side_by_side_with_split_threads_and_benches_alone_afterwards(tmp_path, monkeypatch):
    import threading
    import time

    from repro import runner

    layout = Layout(tmp_path, quick=False, jobs=2)
    rows = [r for r in plan.RUNS if r.table == "gslora"][:2]  # 2 rows x 2 seeds
    bench = plan.BENCHES[0]
    running, peak, order, lock = [0], [0], [], threading.Lock()

    def fake_call(args, env, log):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            order.append((args[0], env.get("OMP_NUM_THREADS"), running[0]))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if args[0] == "bench":
            Path(args[-1]).write_text("{}")
        return 0, 0.05

    monkeypatch.setattr(runner, "_call", fake_call)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(runner, "shown", lambda path: str(path))
    assert runner.execute(layout, rows, [bench]) == []
    assert peak[0] == 2 and len(order) == 5
    assert all(threads == "2" for cmd, threads, _ in order if cmd == "forget")
    assert order[-1][0] == "bench" and order[-1][2] == 1  # alone, after every row, with the default threads
    assert order[-1][1] == os.environ.get("OMP_NUM_THREADS")  # the bench's env is not the lanes' split
