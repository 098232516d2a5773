"""Run folders are claimed by an atomic mkdir: concurrent starts in the same second never collide."""

from __future__ import annotations

import multiprocessing as mp
import time

from omegaconf import OmegaConf

from sparsetune.engine.run_folder import RunFolder, finished


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


def _hold_lock(path, ready):
    RunFolder(path).lock()
    ready.set()
    time.sleep(600)  # until killed


def test_one_writer_per_run_folder_and_the_kernel_releases_a_dead_writers_lock(tmp_path):
    """Issue #22 item 2: the lock is an flock on `.lock`, held by the writing process for its life; a
    second writer is refused with one line, a reader sees the folder in use, and SIGKILL frees it."""
    import os
    import signal

    import pytest

    from sparsetune.engine.run_folder import release_run_folders
    from sparsetune.errors import RunFolderBusyError

    cfg = OmegaConf.create({"run_dir": str(tmp_path), "recipe": "r"})
    run = RunFolder.create(cfg, [], "train")
    release_run_folders()  # as if the creating process had finished
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    writer = ctx.Process(target=_hold_lock, args=(run.path, ready))
    writer.start()
    try:
        assert ready.wait(60)
        assert run.in_use()
        with pytest.raises(RunFolderBusyError, match="being written by another sparsetune process") as info:
            run.lock()
        assert "\n" not in str(info.value) and info.value.exit_code == 2
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(60)
    assert not run.in_use()
    run.lock()  # the dead writer's lock is gone with it
    run.lock()  # and taking it again in the same process is a no-op
    release_run_folders()


def test_a_run_folder_deleted_or_moved_is_noticed_and_not_recreated(tmp_path):
    """Issue #22 item 3: every write into a locked run folder first checks it is still there."""
    import shutil

    import pytest

    from sparsetune.engine.run_folder import check_present, release_run_folders
    from sparsetune.errors import RunFolderGoneError

    cfg = OmegaConf.create({"run_dir": str(tmp_path), "recipe": "r"})
    moved, deleted = RunFolder.create(cfg, [], "train"), RunFolder.create(cfg, [], "train")
    check_present(moved.path / "metrics.jsonl")
    moved.path.rename(tmp_path / "elsewhere")
    with pytest.raises(RunFolderGoneError, match="deleted or moved"):
        check_present(moved.path / "metrics.jsonl")
    shutil.rmtree(deleted.path)
    with pytest.raises(RunFolderGoneError):
        deleted.write_summary({"x": 1})
    assert not deleted.path.exists() and not moved.path.exists()
    release_run_folders()


def test_finished_means_a_summary_that_is_not_a_diverged_record(tmp_path):
    assert not finished(tmp_path)  # no summary.json
    (tmp_path / "summary.json").write_text('{"status": "diverged", "diverged_at_step": 3}')
    assert not finished(tmp_path)
    (tmp_path / "summary.json").write_text('{"status": "finished"}')
    assert finished(tmp_path)
    (tmp_path / "summary.json").write_text('{"train_loss": 1.0}')  # written before summaries had a status
    assert finished(tmp_path)
