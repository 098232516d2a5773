"""The command line: fast help, and one readable line + exit 2 for every kind of bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "eval=none"]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsetune.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


def test_cli_import_is_light():
    """`sparsetune --help` must not import torch/transformers/hydra (it answers in well under 2 s)."""
    code = ("import sys, sparsetune.cli; heavy = [m for m in ('torch', 'transformers', 'hydra', 'peft', 'lm_eval')"
            " if m in sys.modules]; print(heavy); assert not heavy")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_help_lists_commands_and_examples():
    out = cli("--help").stdout
    for command in ("train", "prune", "forget", "eval", "bench", "recipes"):
        assert command in out
    assert "recipe=lora_llama" in cli("train", "--help").stdout


def test_recipes_lists_descriptions():
    out = cli("recipes").stdout
    assert "lora_llama" in out and "LoRA" in out


def test_cfg_prints_resolved_config():
    res = cli("train", "recipe=lora_llama", "method.r=4", "--cfg")
    assert res.returncode == 0 and "r: 4" in res.stdout and "name: lora" in res.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model.hidden_sise=1"], "model.hidden_sise"),
        (["trainer.lr=fast"], "trainer.lr"),
        (["model=nope"], "available:"),
        (["+trainer.foo=1"], "trainer.foo"),
        (["data=jsonl", "data.path=/nonexistent/train.jsonl"], "/nonexistent/train.jsonl"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_touches_no_run(tmp_path, args, needle):
    existing = tmp_path / "20260101-000000-old"
    existing.mkdir()
    (existing / "summary.json").write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    res = cli("train", *TINY, f"run_dir={tmp_path}", *args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_broken_jsonl_row_names_file_and_line(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "answer": \n')
    res = cli("train", *TINY, f"run_dir={tmp_path / 'runs'}", "data=jsonl", f"data.path={data}")
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()
    assert len(line) == 1 and f"{data}:2" in line[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unsupported_job_for_method():
    res = cli("prune", *TINY, "method=lora")
    assert res.returncode == 2 and "does not support `prune`" in res.stderr
