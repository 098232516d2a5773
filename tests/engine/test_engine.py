"""The training engine: run-folder contract, exact resume, accumulation, schedule, NaN guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import sparsetune.jobs.train as train_job
from sparsetune.engine.optim import lr_factor
from sparsetune.errors import TrainingDivergedError
from sparsetune.jobs import run_job
from sparsetune.jobs.assemble import setup
from sparsetune.jobs.config import compose_job as compose

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "trainer.batch_size=4",
        "trainer.warmup_steps=2", "trainer.lr=1e-3", "trainer.threads=1"]


def train(overrides: list[str]) -> tuple[dict, Path]:
    cfg = compose(overrides)
    summary = run_job(cfg, overrides)
    runs = sorted(Path(cfg.run_dir or __import__("os").environ["SPARSETUNE_RUNS"]).iterdir(),
                  key=lambda p: p.stat().st_mtime)
    return summary, runs[-1]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_run_folder_contract(tmp_path):
    summary, run = train([*TINY, f"run_dir={tmp_path}", "trainer.max_steps=4", "trainer.save_every=2",
                          "eval.limit=4"])
    for name in ("config.yaml", "overrides.txt", "metrics.jsonl", "summary.json", "checkpoints/latest", "export"):
        assert (run / name).exists(), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("loss", "lr", "step_time_s", "tokens_per_s", "peak_memory_mb"):
        assert key in steps[0]
    saved = json.loads((run / "summary.json").read_text())
    for key in ("method", "model", "trainable_params", "total_params", "steps", "train_loss", "peak_memory_mb",
                "step_time_s", "throughput", "wall_time_s", "eval"):
        assert key in saved, key
    assert saved["steps"] == 4 and saved["trainable_params"] == saved["total_params"] > 0
    assert saved["eval"] and all("acc" in m or "exact_match" in m for t, m in saved["eval"].items() if t != "average")


def test_summary_peak_memory_is_training_and_the_held_out_eval_is_counted_apart(tmp_path, monkeypatch):
    """The held-out eval runs after training in the same process: its memory must not pass for training's."""
    def hungry_eval(*args, **kwargs):
        block = torch.ones(256 * 1024 * 1024 // 4)  # 256 MB, touched: resident
        assert float(block.sum()) > 0
        return {}

    monkeypatch.setattr(train_job, "evaluate_model", hungry_eval)
    _, run = train([*TINY, f"run_dir={tmp_path}", "trainer.max_steps=2", "trainer.save_every=0"])
    saved = json.loads((run / "summary.json").read_text())
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert saved["process_peak_memory_mb"] - saved["peak_memory_mb"] > 128  # the eval's block, not training's
    assert saved["peak_memory_mb"] - steps[-1]["peak_memory_mb"] < 40  # what the last step saw, give or take


def test_resume_after_crash_matches_uninterrupted(tmp_path):
    common = [*TINY, "trainer.max_steps=6", "trainer.save_every=3", "eval=none"]
    full, _ = train([*common, f"run_dir={tmp_path / 'a'}"])
    crashed, run = train([*common, f"run_dir={tmp_path / 'b'}"])
    # simulate a kill right after the step-3 checkpoint: drop the later checkpoint, keep the log tail
    ckpts = run / "checkpoints"
    shutil.rmtree(ckpts / "step-0000006")
    (ckpts / "latest").write_text("step-0000003\n")
    (run / "summary.json").unlink()
    resumed = run_job(_resume_cfg(run), [f"resume={run}"])
    for key in ("train_loss", "final_step_loss", "steps", "trainable_params"):
        assert resumed[key] == full[key], key
    assert losses(run) == losses(tmp_path / "a" / next((tmp_path / "a").iterdir()).name)


def _resume_cfg(run: Path):
    from sparsetune.engine.run_folder import RunFolder
    from sparsetune.jobs.config import load_run_config

    cfg = load_run_config(RunFolder.open(run))
    cfg.resume = str(run)
    return cfg


def test_gradient_accumulation_matches_big_batch():
    """One step of 2 × 4 accumulated micro-batches equals one step of a batch of 8 (token-weighted)."""
    from sparsetune.engine.loop import BatchStream, LoopState, TrainLoop
    from sparsetune.engine.losses import causal_lm_loss
    from sparsetune.engine.optim import build_scheduler

    results = []
    for bs, accum in ((8, 1), (4, 2)):
        cfg = compose([*TINY, f"trainer.batch_size={bs}", f"trainer.grad_accum={accum}", "trainer.max_grad_norm=null",
                       "trainer.warmup_steps=0", "trainer.schedule=constant"])
        job = setup(cfg, [], create_run=False)
        # SGD with lr 1 makes the update the gradient itself (Adam's first step is ~lr·sign(g), blind to
        # a wrongly weighted micro-batch)
        opt = torch.optim.SGD([p for p in job.model.parameters() if p.requires_grad], lr=1.0)
        loop = TrainLoop(model=job.model, method=job.method, optimizer=opt, scheduler=build_scheduler(opt, cfg.trainer, 1),
                         stream=BatchStream(job.dataset, job.collate, bs, cfg.seed, LoopState()),
                         loss_fn=causal_lm_loss, tcfg=cfg.trainer, total_steps=1, logger=None,
                         checkpoint_dir=None, device="cpu")
        metrics = loop.train_step()
        results.append((metrics["loss"], [p.detach().clone() for p in job.model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lr_schedule():
    assert lr_factor(0, 4, 10, "linear") == pytest.approx(0.25)
    assert lr_factor(3, 4, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(4, 4, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(7, 4, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 4, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(9, 0, 10, "constant") == 1.0


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import sparsetune.engine.losses as losses_mod

    calls = {"n": 0}
    real = losses_mod.causal_lm_loss

    def poisoned(model, batch):
        calls["n"] += 1
        loss, n, out = real(model, batch)
        return (loss * float("nan") if calls["n"] > 2 else loss), n, out

    monkeypatch.setattr(losses_mod, "task_loss", lambda task: poisoned)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 3: loss is nan; last good checkpoint: .*step-0000002"):
        train([*TINY, f"run_dir={tmp_path}", "trainer.max_steps=5", "trainer.save_every=1", "eval=none"])
    run = next(tmp_path.iterdir())
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert (run / "checkpoints" / "step-0000002" / "manifest.json").exists()


def test_method_after_step_work_sees_the_rate_the_step_used():
    """GS-LoRA's proximal threshold is lr x alpha of the step just taken; on a linear warm-up every
    step has its own rate, so reading it after the scheduler moved on would be the next step's."""
    from sparsetune.engine.loop import BatchStream, LoopState, TrainLoop
    from sparsetune.engine.losses import causal_lm_loss
    from sparsetune.engine.optim import build_optimizer, build_scheduler

    cfg = compose([*TINY, "method=lora", "method.r=2", "trainer.warmup_steps=4", "trainer.schedule=linear"])
    job = setup(cfg, [], create_run=False)
    opt = build_optimizer(job.method, job.model, cfg.trainer)
    sched = build_scheduler(opt, cfg.trainer, 6)
    seen, used = [], []
    job.method.on_step = lambda step, total: seen.append(opt.param_groups[0]["lr"])
    loop = TrainLoop(model=job.model, method=job.method, optimizer=opt, scheduler=sched,
                     stream=BatchStream(job.dataset, job.collate, 4, cfg.seed, LoopState()),
                     loss_fn=causal_lm_loss, tcfg=cfg.trainer, total_steps=6, logger=None,
                     checkpoint_dir=None, device="cpu")
    for _ in range(3):
        used.append(opt.param_groups[0]["lr"])  # the rate optimizer.step() is about to use
        loop.train_step()
    assert seen == used and len(set(used)) == 3
    assert used == pytest.approx([cfg.trainer.lr * lr_factor(i, 4, 6, "linear") for i in range(3)])
