"""The promise of the method interface: a new method is its own module, one registry line (or one entry
point of the package it lives in) and its option file. A toy method from outside the repository
trains in one process and in two (DDP through the launcher), is refused FSDP from its own facts,
exports in every format it offers and is evaluated, with no job edit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sparsetune.errors import ConfigError, UserError

PLUGINS = Path(__file__).resolve().parents[1] / "fixtures" / "plugins"


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    """The toy method installed the way a user's package would be: its module and its entry point on
    the path (PYTHONPATH too, so the processes of a multi-process run find it), plus its option file."""
    from sparsetune import methods
    from sparsetune.jobs import config as job_config

    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    assert methods.load_plugins() == {"toy_scale": "toy_scale_method:ToyScale"}  # found through its entry point
    monkeypatch.setattr(job_config, "_registered", [])  # register its schema like the built-in ones
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "toy_scale.yaml").write_text("name: toy_scale\n")  # its option file
    yield ["--config-dir", str(tmp_path / "conf")]
    del methods.REGISTRY["toy_scale"]  # uninstalled: later tests see the built-in methods only


def _overrides(tmp_path, *extra):
    return ["model=tiny_llama", "data=synthetic_arith", "method=toy_scale", "logger=quiet", "trainer.max_steps=2",
            "trainer.batch_size=4", "trainer.lr=1e-2", "eval.limit=4", "trainer.threads=1",
            f"run_dir={tmp_path / 'runs'}", *extra]


def test_a_new_method_trains_exports_and_evaluates_without_job_edits(toy, tmp_path):
    from typer.testing import CliRunner

    from sparsetune.cli import app
    from sparsetune.jobs.export import export_run

    runner = CliRunner()
    result = runner.invoke(app, ["train", *toy, *_overrides(tmp_path)])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    assert (run / "export" / "scale.txt").is_file()
    # its checks run when the config is composed
    bad = runner.invoke(app, ["train", *toy, *_overrides(tmp_path, "method.init=-1")])
    assert isinstance(bad.exception, ConfigError) and "method.init" in str(bad.exception)  # the CLI: one line, exit 2
    # the launcher reads its strategies: DDP only (the default), so FSDP is one line
    fsdp = runner.invoke(app, ["train", *toy, *_overrides(tmp_path, "trainer.nproc=2", "trainer.strategy=fsdp")])
    assert isinstance(fsdp.exception, ConfigError) and "use trainer.strategy=ddp for toy_scale" in str(fsdp.exception)
    # export: merged through its own hook (with its note on the card), adapter as it is, peft refused
    merged = export_run(str(run), "merged", out=str(tmp_path / "merged"))
    assert "folded into the final norm" in (merged / "README.md").read_text()
    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(merged)  # plain transformers, no sparsetune module
    scale = float((run / "export" / "scale.txt").read_text())
    assert scale != 1.0 and isinstance(stock.model.norm, type(stock.model.layers[0].input_layernorm))
    adapter = export_run(str(run), "adapter", out=str(tmp_path / "adapter"))
    assert (adapter / "scale.txt").is_file()
    with pytest.raises(UserError, match="a scalar is not a PEFT module"):
        export_run(str(run), "peft", out=str(tmp_path / "peft"))
    # eval of the run rebuilds it from its checkpoint
    result = runner.invoke(app, ["eval", f"run={run}"])
    assert result.exit_code == 0, result.output


def test_a_plugin_method_trains_in_two_processes_under_ddp(toy, tmp_path):
    """The launcher's children find the plug-in through its entry point (nothing is registered in them
    by hand) and train it under DDP; rank 0 writes the run."""
    from typer.testing import CliRunner

    from sparsetune.cli import app

    result = CliRunner().invoke(app, ["train", *toy, *_overrides(tmp_path, "trainer.nproc=2")])
    assert result.exit_code == 0, result.output
    summary = json.loads(next((tmp_path / "runs").iterdir()).joinpath("summary.json").read_text())
    assert summary["method"] == "toy_scale" and summary["world_size"] == 2 and summary["strategy"] == "ddp"
