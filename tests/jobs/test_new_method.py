"""The promise of the method interface: a new method is its own module, one registry line and its
option file. A toy method registered here trains, is refused or accepted by the multi-process
launcher from its own facts, exports in every format it offers and is evaluated, with no job edit."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sparsetune.config.schema import MethodConfig
from sparsetune.errors import ConfigError, UserError
from sparsetune.methods.base import Method


@dataclass
class ScaleConfig(MethodConfig):
    name: str = "toy_scale"
    init: float = 1.0

    @staticmethod
    def check(cfg) -> None:
        if not cfg.init > 0:
            raise ConfigError("method.init: must be > 0")


class ScaledNorm(torch.nn.Module):
    def __init__(self, norm: torch.nn.Module, init: float):
        super().__init__()
        self.norm, self.scale = norm, torch.nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return self.norm(x) * self.scale


class ToyScale(Method):
    """Trains one scalar after the final norm; its export is its own file, its merged form a stock folder."""

    config_class = ScaleConfig
    stock_export = False
    no_peft_reason = "a scalar is not a PEFT module"
    merged_note = "the scale is folded into the final norm"

    def apply(self, model, ctx):
        super().apply(model, ctx)
        model.requires_grad_(False)
        model.model.norm = ScaledNorm(model.model.norm, self.cfg.init)
        return model

    def export(self, model, path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "scale.txt").write_text(str(model.model.norm.scale.item()))
        return path

    @torch.no_grad()
    def export_merged(self, model, path):
        wrapped = model.model.norm
        wrapped.norm.weight.mul_(wrapped.scale)
        model.model.norm = wrapped.norm
        model.save_pretrained(path)
        return path


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    from sparsetune import methods
    from sparsetune.jobs import config as job_config

    module = types.ModuleType("toy_scale_method")
    module.ToyScale = ToyScale
    monkeypatch.setitem(sys.modules, "toy_scale_method", module)
    monkeypatch.setitem(methods.REGISTRY, "toy_scale", "toy_scale_method:ToyScale")  # the one registry line
    monkeypatch.setattr(job_config, "_registered", [])  # register its schema like the built-in ones
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "toy_scale.yaml").write_text("name: toy_scale\n")  # its option file
    return ["--config-dir", str(tmp_path / "conf")]


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
