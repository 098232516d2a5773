"""`sparsetune eval run=DIR` rebuilds the trained model and reproduces the run's own final eval."""

from __future__ import annotations

import json
from pathlib import Path

from sparsetune.jobs import run_job
from sparsetune.jobs.config import compose_job as compose
from sparsetune.jobs.evaluate import evaluate_run


def test_eval_run_matches_training_eval(tmp_path):
    overrides = ["model=tiny_llama", "data=synthetic_arith", "method=lora", "method.r=4", "logger=quiet",
                 "trainer.max_steps=3", "trainer.batch_size=4", "trainer.lr=5e-3", "eval.limit=6",
                 f"run_dir={tmp_path}"]
    summary = run_job(compose(overrides), overrides)
    run = next(Path(tmp_path).iterdir())
    results = evaluate_run(str(run), [])
    for task, metrics in summary["eval"].items():
        for name, value in metrics.items():
            assert results[task][name] == value, (task, name)
    assert json.loads((run / "summary.json").read_text())["eval"] == results
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])  # logged like a training eval
    assert last["step"] == 3 and any(k.startswith("eval/") for k in last)


def test_eval_run_of_s2ft_loads_the_exported_adapter_on_a_fresh_base(tmp_path):
    overrides = ["model=tiny_qwen2", "data=synthetic_arith", "method=s2ft", "method.o_ratio=0.5",
                 "method.d_ratio=0.2", "logger=quiet", "trainer.max_steps=3", "trainer.batch_size=4",
                 "trainer.lr=1e-2", "eval.limit=6", f"run_dir={tmp_path}"]
    summary = run_job(compose(overrides), overrides)
    run = next(Path(tmp_path).iterdir())
    assert (run / "export" / "adapter.safetensors").exists()
    # remove checkpoints: evaluation must come from the adapter alone
    import shutil

    shutil.rmtree(run / "checkpoints")
    results = evaluate_run(str(run), [])
    for task, metrics in summary["eval"].items():
        for name, value in metrics.items():
            assert results[task][name] == value, (task, name)


def test_eval_of_lm_eval_tasks_alone_never_loads_the_training_data(tmp_path, monkeypatch):
    import torch

    import sparsetune.data
    from sparsetune.jobs.evaluate import evaluate_recipe

    def no_data(*args, **kwargs):
        raise AssertionError("an eval of lm-eval tasks alone must not load the recipe's data")

    monkeypatch.setattr(sparsetune.data, "load_splits", no_data)
    overrides = ["model=tiny_llama", "method=full", "logger=quiet", "eval.tasks=[arc_easy]", "eval.limit=2",
                 "trainer.threads=1", f"run_dir={tmp_path}"]
    threads = torch.get_num_threads()
    try:
        results = evaluate_recipe(compose(overrides), overrides)
        assert torch.get_num_threads() == 1  # eval honours trainer.threads
    finally:
        torch.set_num_threads(threads)
    assert results["arc_easy"]["n"] == 2 and "acc_stderr" in results["arc_easy"]
