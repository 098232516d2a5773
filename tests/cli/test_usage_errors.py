"""Every command-line mistake is one line on stderr and exit 2: never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsetune.cli import main

SPARSETUNE = Path(sys.executable).parent / "sparsetune"


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--bogus"], "No such option: --bogus"),
        (["train", "--bogus"], "sparsetune train --help"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["trian"], "Did you mean 'train'"),
        (["bench"], "NAME"),
        (["-m"], "sweeps"),
        (["train", "-m", "recipe=lora_llama"], "nothing to sweep"),
        (["train", "--multirun"], "nothing to sweep"),
        (["train", "--cfg", "bogus"], "'bogus'"),
        (["train", "--cfg", "hydra"], "--cfg job"),
        (["forget", "--classes"], "--classes"),
        (["forget", "--classes", "dog", "--cfg"], "no class named 'dog'; valid: 0=T-shirt/top"),
        (["forget", "--classes", "s", "--cfg"], "ambiguous (Sandal, Shirt, Sneaker)"),
        (["eval", "run="], "run= needs a run folder"),
        (["train", "recipe="], "recipe= needs a recipe name; available:"),
        (["train", "recipe=../../x"], "may not contain path parts"),
        (["train", "model=../recipe/lora_llama"], "may not contain path parts"),
        (["train", "recipe=nope"], "unknown recipe 'nope'"),
        (["train", "recipe=/nonexistent/mine.yaml"], "recipe file not found"),
        (["train", "model=nope"], "unknown model 'nope'; available:"),
        (["train", "--config-dir", "/nonexistent/dir", "--cfg"], "not a folder"),
    ],
)
def test_usage_error_is_one_line_exit_2(capsys, args, needle):
    code, _, err = run_main(capsys, *args)
    line = one_line(err)
    assert code == 2, err
    assert line.startswith("error:") and needle in line, line


def test_bare_command_prints_help_and_exits_0(capsys):
    code, out, err = run_main(capsys)
    assert code == 0
    assert "train" in out and "forget" in out and "Usage" in out
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--bogus"], "No such option"),
        (["trian"], "Did you mean 'train'"),
        (["--multirun"], "sweeps"),
        (["train", "recipe=../../x"], "path parts"),
    ],
)
def test_installed_entry_point(args, needle):
    """The console script itself (not just main()): one line, exit 2."""
    exe = [str(SPARSETUNE)] if SPARSETUNE.exists() else [sys.executable, "-m", "sparsetune.cli"]
    res = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert res.returncode == 2, res.stderr
    assert needle in one_line(res.stderr)
