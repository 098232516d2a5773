"""Run folders are claimed by an atomic mkdir: concurrent starts in the same second never collide."""

from __future__ import annotations

import multiprocessing as mp
import time

from omegaconf import OmegaConf

from sparsetune.engine.run_folder import RunFolder


def _create(args) -> str:
    root, barrier = args
    cfg = OmegaConf.create({"run_dir": root, "recipe": "race"})
    barrier.wait()
    return str(RunFolder.create(cfg, ["x=1"], "train").path)


def _worker(root, barrier, out):
    time.strftime = lambda fmt, *a: "20260101-000000"  # every process sees the same second
    out.put(_create((root, barrier)))


def test_twelve_processes_same_second_get_distinct_folders(tmp_path):
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(12), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), barrier, out)) for _ in range(12)]
    for p in procs:
        p.start()
    paths = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(paths)) == 12
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    assert names[0] == "20260101-000000-race"
    assert set(names[1:]) == {f"20260101-000000-race-{n}" for n in range(2, 13)}
    for p in paths:
        run = RunFolder.open(p)
        assert run.checkpoints.is_dir() and (run.path / "overrides.txt").read_text() == "train x=1\n"


def test_existing_folder_is_never_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "recipe": "r"})
    (tmp_path / "20260101-000000-r").mkdir()
    (tmp_path / "20260101-000000-r" / "keep.txt").write_text("mine")
    a = RunFolder.create(cfg, [], "train")
    b = RunFolder.create(cfg, [], "train")
    assert (a.path.name, b.path.name) == ("20260101-000000-r-2", "20260101-000000-r-3")
    assert (tmp_path / "20260101-000000-r" / "keep.txt").read_text() == "mine"
