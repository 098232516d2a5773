"""Resume never silently restarts: a missing/empty/dangling `latest` is a one-line error that leaves the
run folder byte-for-byte unchanged; a damaged latest checkpoint falls back to the previous good one and
still reproduces the uninterrupted run; overrides with resume= are an explicit allow-list."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsetune.engine.optim import lr_factor
from sparsetune.errors import UserError
from sparsetune.jobs import run_job
from sparsetune.jobs.config import compose_job as compose
from sparsetune.jobs.resume import resume_config

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "trainer.batch_size=4",
        "trainer.warmup_steps=2", "trainer.lr=1e-3", "trainer.threads=1", "trainer.schedule=linear", "eval=none"]


def train(overrides: list[str], root: Path) -> tuple[dict, Path]:
    overrides = [*overrides, f"run_dir={root}"]
    summary = run_job(compose(overrides), overrides)
    return summary, next(root.iterdir())


def resume(run: Path, *overrides: str) -> dict:
    args = [f"resume={run}", *overrides]
    return run_job(resume_config(str(run), args), args)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in records(run) if "loss" in r]


def snapshot(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def _no_latest(ck: Path) -> None:
    (ck / "latest").unlink()


def _empty_latest(ck: Path) -> None:
    (ck / "latest").write_text("\n")


def _dangling_latest(ck: Path) -> None:
    (ck / "latest").write_text("step-0000099\n")


def _no_checkpoints(ck: Path) -> None:
    for p in ck.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _all_damaged(ck: Path) -> None:
    for step in ck.glob("step-*"):
        (step / "tensors.safetensors").write_bytes(b"garbage")


@pytest.mark.parametrize("breakage,message", [
    (_no_latest, "latest is missing"), (_empty_latest, "latest is empty"),
    (_dangling_latest, "points at 'step-0000099', which does not exist"), (_no_checkpoints, "latest is missing"),
    (_all_damaged, "no good checkpoint"),
])
def test_resume_without_a_good_checkpoint_fails_and_touches_nothing(tmp_path, breakage, message):
    _, run = train([*TINY, "trainer.max_steps=4", "trainer.save_every=2"], tmp_path)
    (run / "summary.json").unlink()  # as if killed before the end
    breakage(run / "checkpoints")
    before = snapshot(run)
    with pytest.raises(UserError, match=message) as info:
        resume(run)
    assert "\n" not in str(info.value)
    assert snapshot(run) == before


def test_cli_resume_failure_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from sparsetune import cli

    _, run = train([*TINY, "trainer.max_steps=2"], tmp_path)
    (run / "checkpoints" / "latest").unlink()
    before = snapshot(run)
    capsys.readouterr()
    for argv, expect in (([f"resume={run}"], "cannot resume"),
                         ([f"resume={run}", "trainer.lr=1"], "resume=… accepts only")):
        monkeypatch.setattr(sys, "argv", ["sparsetune", "train", *argv])
        with pytest.raises(SystemExit) as info:
            cli.main()
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and err.startswith("error: ") and expect in err and "\n" not in err
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", ["truncate", "random", "edit_json"])
def test_damaged_latest_falls_back_to_previous_and_matches_uninterrupted(tmp_path, capsys, damage):
    common = [*TINY, "trainer.max_steps=6", "trainer.save_every=3"]
    full, ref = train(common, tmp_path / "a")
    _, run = train(common, tmp_path / "b")
    (run / "summary.json").unlink()
    step = run / "checkpoints" / "step-0000006"
    if damage == "truncate":
        data = (step / "model.safetensors").read_bytes()
        (step / "model.safetensors").write_bytes(data[:100])
    elif damage == "random":
        size = (step / "tensors.safetensors").stat().st_size
        (step / "tensors.safetensors").write_bytes(np.random.default_rng(1).bytes(size))
    else:
        (step / "state.json").write_text((step / "state.json").read_text().replace('"step": 6', '"step": 5', 1))
    capsys.readouterr()
    resumed = resume(run)
    err = capsys.readouterr().err
    assert "checkpoint step-0000006 is damaged (" in err and "resuming from step-0000003" in err
    for key in ("train_loss", "final_step_loss", "steps", "trainable_params"):
        assert resumed[key] == full[key], key
    assert losses(run) == losses(ref)
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_disallowed_override_is_rejected_with_the_accepted_list(tmp_path):
    _, run = train([*TINY, "trainer.max_steps=2"], tmp_path)
    before = snapshot(run)
    for bad in ("trainer.lr=1e-2", "method=lora", "seed=3", "data.name=x", "~eval", "recipe=lora_llama"):
        with pytest.raises(UserError, match=r"accepts only .*trainer\.max_steps.*logger\.\*, eval\.\*"):
            resume_config(str(run), [f"resume={run}", bad])
    cfg = resume_config(str(run), [f"resume={run}", "trainer.save_every=5", "eval.limit=3", "trainer.threads=1"])
    assert cfg.trainer.save_every == 5 and cfg.eval.limit == 3 and cfg.resume == str(run)
    assert snapshot(run) == before


def test_extending_max_steps_continues_with_the_schedule_rebuilt(tmp_path):
    _, run = train([*TINY, "trainer.max_steps=4", "trainer.save_every=2"], tmp_path)
    summary = resume(run, "trainer.max_steps=6")
    assert summary["steps"] == 6
    steps = [r for r in records(run) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    # logged lr at step s is the lr the next step uses: the new 6-step linear schedule from the resume on
    for r in steps[4:]:
        assert r["lr"] == pytest.approx(1e-3 * lr_factor(r["step"], 2, 6, "linear"))
    _, fresh = train([*TINY, "trainer.max_steps=6"], tmp_path / "fresh")
    assert [r["lr"] for r in steps[4:]] == pytest.approx([r["lr"] for r in records(fresh) if "loss" in r][4:])
    assert "max_steps: 6" in (run / "config.yaml").read_text()
    assert (run / "overrides.txt").read_text().splitlines()[-1] == "resume trainer.max_steps=6"
    # the extended run resumes again cleanly as a 6-step run
    assert resume_config(str(run), [f"resume={run}"]).trainer.max_steps == 6
    with pytest.raises(UserError, match="below the checkpoint's step 6"):
        resume(run, "trainer.max_steps=3")


def test_sigkill_then_cli_resume_matches_uninterrupted(tmp_path):
    """A real SIGKILL of `sparsetune train` mid-run, then `sparsetune train resume=DIR`: bit-identical."""
    import os
    import signal
    import subprocess
    import time

    def cli(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "sparsetune.cli", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "WANDB_MODE": "disabled"})

    args = [*TINY, "trainer.max_steps=150", "trainer.save_every=2", "trainer.log_every=1"]
    victim = cli("train", *args, f"run_dir={tmp_path / 'victim'}")
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        latest = list((tmp_path / "victim").glob("*/checkpoints/latest")) if (tmp_path / "victim").exists() else []
        if latest and latest[0].read_text().strip() >= "step-0000004":
            break
        time.sleep(0.02)
    if victim.poll() is not None:
        pytest.skip("the victim finished before it could be killed")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run = next((tmp_path / "victim").iterdir())
    assert not (run / "summary.json").exists()
    resumed = cli("train", f"resume={run}")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    full, ref = train(args, tmp_path / "ref")
    assert json.loads((run / "summary.json").read_text())["train_loss"] == full["train_loss"]
    assert losses(run) == losses(ref)
    assert [r["step"] for r in records(run) if "loss" in r] == list(range(1, 151))
