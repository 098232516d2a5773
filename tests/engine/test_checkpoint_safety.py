"""Checkpoints cannot carry code: safetensors + JSON with a verified manifest; a pickle is never loaded."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetune.engine.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from sparsetune.errors import UserError
from sparsetune.jobs import run_job
from sparsetune.jobs.config import compose_job as compose
from sparsetune.jobs.evaluate import evaluate_run

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "trainer.batch_size=4",
        "trainer.warmup_steps=1", "trainer.lr=1e-3", "trainer.threads=1", "eval.limit=2"]


class Payload:
    """Unpickling this writes `marker`: the proof that a pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _train(tmp_path: Path) -> Path:
    overrides = [*TINY, f"run_dir={tmp_path / 'runs'}", "trainer.max_steps=2", "trainer.save_every=1"]
    run_job(compose(overrides), overrides)
    return next((tmp_path / "runs").iterdir())


def _resume_cfg(run: Path):
    # built like the CLI's resume path, without new APIs, so this test also runs (and fails) on the
    # old pickle-based checkpoints
    from sparsetune.engine.run_folder import RunFolder
    from sparsetune.jobs.config import load_run_config

    cfg = load_run_config(RunFolder.open(run))
    cfg.resume = str(run)
    return cfg


def _poison(path: Path, marker: Path) -> None:
    torch.save({"loop": {"step": 2}, "evil": Payload(marker)}, path)


def test_poisoned_legacy_state_pt_is_refused_by_resume_and_eval(tmp_path):
    run = _train(tmp_path)
    marker = tmp_path / "pwned"
    step = run / "checkpoints" / "step-0000002"
    shutil.rmtree(step)
    step.mkdir()
    _poison(step / "state.pt", marker)
    shutil.rmtree(run / "export", ignore_errors=True)  # make eval go through the checkpoint
    with pytest.raises(UserError, match="old pickle format") as info:
        run_job(_resume_cfg(run), [f"resume={run}"])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="old pickle format"):
        evaluate_run(str(run), [])
    assert not marker.exists()


def test_pickles_dropped_into_a_good_checkpoint_are_never_loaded(tmp_path, capsys):
    run = _train(tmp_path)
    marker = tmp_path / "pwned"
    step = run / "checkpoints" / "step-0000002"
    _poison(step / "state.pt", marker)  # ignored: the manifest does not list it
    _poison(step / "extra.pkl", marker)
    shutil.rmtree(run / "export", ignore_errors=True)
    results = evaluate_run(str(run), [])
    assert results and not marker.exists()
    # a pickle disguised as the tensors file fails its hash: the previous good checkpoint is used
    _poison(step / "model.safetensors", marker)
    with pytest.raises(UserError, match="damaged"):
        evaluate_run(str(run), [])  # eval never silently evaluates an older checkpoint
    capsys.readouterr()
    summary = run_job(_resume_cfg(run), [f"resume={run}"])
    assert summary["steps"] == 2 and not marker.exists()
    assert "checkpoint step-0000002 is damaged" in capsys.readouterr().err.replace("\n", "")
    evaluate_run(str(run), [])  # the resumed run wrote a good step-2 again
    assert not marker.exists()


def test_format_is_safetensors_json_and_manifest(tmp_path):
    run = _train(tmp_path)
    step = run / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in step.iterdir()) == ["manifest.json", "model.safetensors", "state.json",
                                                      "tensors.safetensors"]
    manifest = json.loads((step / "manifest.json").read_text())
    assert manifest["step"] == 2 and set(manifest["files"]) == {"model.safetensors", "state.json",
                                                                 "tensors.safetensors"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"].values())
    state = json.loads((step / "state.json").read_text())
    assert state["loop"]["step"] == 2 and "optimizer" in state and "rng" in state


def test_nested_state_round_trips_exactly(tmp_path):
    state = {
        "model": {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)},
        "loop": {"step": 5, "train_losses": [0.1, 1 / 3, float("nan")], "last_eval": {}},
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(3)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "fused": None}]},
        "method": {"keep": [1, 2, 3], "sel": {"q": {"0": [1]}}, "mask": torch.tensor([True, False]),
                   "__tensor__": "not a reference"},
        "rng": {"python": __import__("random").getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()},
        "wandb_id": None,
    }
    path = save_checkpoint(tmp_path, 5, state)
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["model"]["b"].dtype == torch.bfloat16
    assert back["loop"]["train_losses"][:2] == [0.1, 1 / 3] and math.isnan(back["loop"]["train_losses"][2])
    opt = back["optimizer"]
    assert set(opt["state"]) == {0} and torch.equal(opt["state"][0]["exp_avg"], torch.ones(3))
    assert opt["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["method"]["sel"] == {"q": {"0": [1]}} and back["method"]["__tensor__"] == "not a reference"
    assert back["rng"]["python"] == state["rng"]["python"]
    np_state = back["rng"]["numpy"]
    assert np_state[0] == "MT19937" and np.array_equal(np_state[1], state["rng"]["numpy"][1])
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(tmp_path, 6, {"loop": {}, "method": {"fn": print}})


@pytest.mark.parametrize("damage", ["truncate", "random", "edit_json", "no_manifest"])
def test_damage_is_detected(tmp_path, damage):
    path = save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(4)}, "loop": {"step": 1}, "x": torch.ones(8)})
    if damage == "truncate":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "random":
        size = (path / "tensors.safetensors").stat().st_size
        (path / "tensors.safetensors").write_bytes(np.random.default_rng(0).bytes(size))
    elif damage == "edit_json":
        (path / "state.json").write_text((path / "state.json").read_text().replace('"step": 1', '"step": 7'))
    else:
        (path / "manifest.json").unlink()
    with pytest.raises(DamagedCheckpointError, match="checkpoint step-0000001 is damaged"):
        load_checkpoint(path)
    assert issubclass(DamagedCheckpointError, CheckpointError) and issubclass(CheckpointError, UserError)
