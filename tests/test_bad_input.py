"""Hostile input, table-driven: every case exits 2 with one stderr line and no traceback, creates no
run folder, and leaves existing run folders byte for byte as they were (config, CLI and resume cases)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from sparsetune.cli import main
from sparsetune.jobs import run_job
from sparsetune.jobs.config import compose_job

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "trainer.batch_size=4", "trainer.threads=1",
        "eval.limit=2"]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished tiny run (2 steps, a checkpoint per step), the template for the resume cases."""
    root = tmp_path_factory.mktemp("template")
    ov = [*TINY, f"run_dir={root}", "trainer.max_steps=2", "trainer.save_every=1", "trainer.warmup_steps=0"]
    run_job(compose_job(ov), ov)
    return next(root.iterdir())


def _break(run: Path, how: str) -> None:
    ckpts = run / "checkpoints"
    if how == "latest_missing":
        (ckpts / "latest").unlink()
    elif how == "latest_empty":
        (ckpts / "latest").write_text("")
    elif how == "latest_dangling":
        (ckpts / "latest").write_text("step-0000099\n")
    elif how == "no_checkpoints":
        shutil.rmtree(ckpts)
        ckpts.mkdir()
    elif how == "config_corrupt":
        (run / "config.yaml").write_text("model: [unclosed\n")
    elif how == "config_bad_value":
        text = (run / "config.yaml").read_text().replace("batch_size: 4", "batch_size: -4")
        (run / "config.yaml").write_text(text)


T = [*TINY]  # shorthand for train cases
CASES = [
    # --- values that must fail before anything exists
    (["train", *T, "trainer.batch_size=0"], "trainer.batch_size"),
    (["train", *T, "trainer.grad_accum=0"], "trainer.grad_accum"),
    (["train", *T, "trainer.lr=-1"], "trainer.lr"),
    (["train", *T, "trainer.lr=nan"], "trainer.lr"),
    (["train", *T, "trainer.lr=inf"], "trainer.lr"),
    (["train", *T, "trainer.lr=${oc.env:HOME}"], "trainer.lr"),
    (["train", *T, "trainer.lr=abc"], "trainer.lr"),
    (["train", *T, "trainer.schedule=bogus"], "trainer.schedule"),
    (["train", *T, "logger.backends=[bogus]"], "logger.backends"),
    (["train", *T, "logger.wandb_mode=sometimes"], "logger.wandb_mode"),
    (["train", *T, "trainer.max_steps=0"], "trainer.max_steps"),
    (["train", *T, "trainer.max_steps=-3"], "trainer.max_steps"),
    (["train", *T, "trainer.epochs=-1"], "trainer.epochs"),
    (["train", *T, "trainer.precision=fp8"], "trainer.precision"),
    (["train", *T, "trainer.device=tpu"], "trainer.device"),
    (["train", *T, "trainer.threads=0"], "trainer.threads"),
    (["train", *T, "trainer.warmup_steps=-1"], "trainer.warmup_steps"),
    (["train", *T, "trainer.max_grad_norm=-1"], "trainer.max_grad_norm"),
    (["train", *T, "trainer.save_every=-1"], "trainer.save_every"),
    (["train", *T, "seed=-1"], "seed"),
    (["train", *T, "seed=4294967296"], "seed"),
    (["train", *T, "data.max_length=0"], "data.max_length"),
    (["train", *T, "data.tasks.x=1"], "data.tasks"),
    (["train", *T, "eval.limit=-1"], "eval.limit"),
    (["train", *T, "eval.batch_size=0"], "eval.batch_size"),
    (["train", *T, "model.dtype=float8"], "model.dtype"),
    (["train", *T, "model.hidden_sise=1"], "model.hidden_sise"),
    (["train", *T, "trainer.foo=1"], "trainer.foo"),
    (["train", *T, "+trainer.bar=1"], "trainer.bar"),
    (["train", *T, "model=nope"], "unknown model 'nope'"),
    (["train", *T, "data=jsonl", "data.path=/nonexistent/train.jsonl"], "/nonexistent/train.jsonl"),
    (["train", *T, "recipe=../../x"], "path parts"),
    (["train", *T, "recipe=nope"], "unknown recipe"),
    (["prune", *T, "method=lora"], "does not support `prune`"),
    (["train", *T, "method=lora", "method.r=-1"], "method.r"),
    (["train", *T, "method=dora", "method.r=0"], "method.r"),
    (["train", *T, "eval.tasks=[nope_task]"], "eval.tasks"),
    (["train", *T, "eval.tasks=[heldout,own_task]", "eval.include_path=/nonexistent/tasks"], "eval.include_path"),
    (["train", *T, "data.train_size=2"], "trainer.batch_size=4 is larger than the 2 training examples"),
    # --- the environment
    (["train", *T, "run_dir=<file>"], "run_dir"),
    (["train", *T, "run_dir=<file>/sub"], "run_dir"),
    (["train", *T, "<full-disk>"], "MB free"),
    # --- run folders given to resume= / eval run=
    (["eval", "run="], "run="),
    (["eval", "run=/nonexistent/run"], "not a sparsetune run folder"),
    (["eval", "run=<config_corrupt>"], "config.yaml"),
    (["eval", "run=<config_bad_value>"], "batch_size"),
    (["train", "resume=<latest_missing>"], "checkpoint"),
    (["train", "resume=<latest_empty>"], "checkpoint"),
    (["train", "resume=<latest_dangling>"], "checkpoint"),
    (["train", "resume=<no_checkpoints>"], "checkpoint"),
    (["train", "resume=<copy>", "method.r=8"], "resume"),
    (["train", "resume=<copy>", "trainer.lr=1"], "resume"),
    # --- the command line itself
    (["--bogus"], "--bogus"),
    (["trian"], "Did you mean 'train'"),
    (["bench"], "NAME"),
    (["bench", "nope"], "unknown benchmark"),
    (["-m"], "sweeps"),
    (["train", "--multirun"], "nothing to sweep"),
    (["forget", "--classes", "dog"], "no class named 'dog'"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[f"{i:02d}-{' '.join(a[-1:])[:40]}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(args, needle, finished, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    existing = runs / finished.name
    shutil.copytree(finished, existing)
    monkeypatch.setenv("SPARSETUNE_RUNS", str(runs))
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    argv = []
    for a in args:
        if "<file>" in a:
            a = a.replace("<file>", str(afile))
        elif a == "<full-disk>":
            import sparsetune.config.checks as checks

            monkeypatch.setattr(checks.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1024))
            continue
        elif a.endswith(">") and "=<" in a:
            key, how = a[:-1].split("=<")
            if how == "copy":
                target = existing
            else:
                target = tmp_path / how  # a damaged copy outside the runs root
                shutil.copytree(finished, target)
                _break(target, how)
            a = f"{key}={target}"
        argv.append(a)
    watched = {p: snapshot(p) for p in (runs, *[tmp_path / a.split("=<")[1][:-1] for a in args
                                               if a.endswith(">") and "=<" in a and "copy" not in a])}
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert info.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    for path, before in watched.items():
        assert snapshot(path) == before, f"{path} changed"


def test_the_table_is_long_enough():
    assert len(CASES) >= 40
