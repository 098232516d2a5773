"""End-to-end CLI runs on the real SmolLM2-135M (offline). `make test-slow`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHORT = ["recipe=lora_llama", "logger=quiet", "trainer.batch_size=4", "data.train_size=64", "data.test_size=10"]


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sparsetune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "WANDB_MODE": "disabled"}, **kw)


def only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def test_lora_llama_run_folder_and_eval(tmp_path):
    proc = cli("train", *SHORT, "trainer.max_steps=3", f"run_dir={tmp_path}")
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err
    run = only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["model"] == "smollm2_135m"
    assert set(summary["eval"]) >= {"boolq", "hellaswag", "average"}
    assert summary["eval"]["boolq"]["n"] == 10
    assert (run / "export" / "adapter_model.safetensors").exists()
    proc = cli("eval", f"run={run}")
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err
    assert "boolq" in out and "acc_norm" in out


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    args = [*SHORT, "trainer.max_steps=6", "trainer.save_every=2", "eval=none"]
    ref = cli("train", *args, f"run_dir={tmp_path / 'ref'}")
    assert ref.wait(timeout=1800) == 0
    victim = cli("train", *args, f"run_dir={tmp_path / 'victim'}")
    deadline = time.time() + 1800
    while time.time() < deadline:
        runs = list((tmp_path / "victim").glob("*/checkpoints/latest")) if (tmp_path / "victim").exists() else []
        if runs and runs[0].read_text().strip() >= "step-0000002":
            break
        time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run = only_run(tmp_path / "victim")
    assert not (run / "summary.json").exists()
    resumed = cli("train", f"resume={run}")
    assert resumed.wait(timeout=1800) == 0, resumed.stderr.read()
    a = json.loads((only_run(tmp_path / "ref") / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    for key in ("steps", "train_loss", "final_step_loss", "trainable_params", "total_params"):
        assert a[key] == b[key], key
