"""The run-folder contract: config.yaml, overrides.txt, metrics.jsonl, summary.json, checkpoints/,
export/, wandb/, and `.lock`. Nothing already written in a run folder is overwritten, except by
resuming it.

One writer per run folder: the process that creates a run folder, or reopens it to resume, holds an
exclusive `flock` on its `.lock` for as long as it lives (the kernel releases it when the process
dies, however it dies); a second writer is refused with one line (`RunFolderBusyError`, exit 2).
Readers (eval, export of a run being written) take no lock: `in_use()` tells them to read only the
last complete checkpoint and record nothing in the folder.

The same lock tells a writer that its folder is gone: before each write (metrics line, checkpoint,
summary) `check_present` compares the folder's `.lock` with the file it locked; a folder deleted or
moved mid-run stops the run (`RunFolderGoneError`) instead of being recreated by the write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsetune.config.checks import check_environment
from sparsetune.config.stored import stored_yaml
from sparsetune.engine.interrupts import critical
from sparsetune.errors import ConfigError, RunFolderBusyError, RunFolderGoneError, UserError, WriteFaultError
from sparsetune.paths import runs_root

LOCK = ".lock"
_held: dict[str, int] = {}  # absolute run folder path -> fd of its locked .lock (for the process's life)
# errno values that mean the disk refused the write, not a bug: reported as one line (WriteFaultError)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})


def write_fault(what: str, exc: BaseException) -> WriteFaultError:
    """`what` failed because the disk refused it: one line with the reason (e.g. No space left on device)."""
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200] or type(exc).__name__
    return WriteFaultError(f"could not write {what}: {reason}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename, so readers never see half a file; a failed
    write (full disk, a signal) removes its temp file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with critical():
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _key(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def lock_run_folder(path: str | os.PathLike) -> None:
    """Take the run folder's lock for this process (a no-op if it holds it already)."""
    key = _key(path)
    if key in _held:
        return
    fd = os.open(os.path.join(key, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderBusyError(
                f"{key} is being written by another sparsetune process (it holds {LOCK}); one writer per run "
                "folder: wait for it to finish or stop it, then try again") from None
        raise
    _held[key] = fd


def release_run_folders(keep: frozenset[str] | set[str] = frozenset()) -> None:
    """Release every run folder lock this process holds except those in `keep` (a long-lived process
    that runs several jobs, e.g. a test session or a notebook, calls this when a job is done)."""
    for key in [k for k in _held if k not in keep]:
        os.close(_held.pop(key))


def held_run_folders() -> set[str]:
    return set(_held)


def _present(key: str, fd: int) -> bool:
    try:
        on_disk = os.stat(os.path.join(key, LOCK))
    except OSError:
        return False
    mine = os.fstat(fd)
    return mine.st_nlink > 0 and (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def owning_run(path: str | os.PathLike) -> str | None:
    """The locked run folder that `path` lies in (this process's), or None."""
    target = _key(path)
    return next((k for k in _held if target == k or target.startswith(k + os.sep)), None)


def finished(run: str | os.PathLike) -> bool:
    """The run ended normally: its summary.json exists and is not a diverged run's record (a diverged run
    writes one too, saying so). Sweeps and the reproduction reuse only finished runs."""
    try:
        summary = json.loads((Path(run) / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("status", "finished") != "diverged"


def check_present(path: str | os.PathLike) -> None:
    """Before a write under `path`: the run folder this process locked is still where it was (not
    deleted, not moved); else RunFolderGoneError, and nothing is written or recreated."""
    key = owning_run(path)
    if key is None or _present(key, _held[key]):
        return
    os.close(_held.pop(key))
    raise RunFolderGoneError(f"the run folder {key} was deleted or moved while this run was writing it; "
                             "stopped without recreating it")


@dataclass
class RunFolder:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @classmethod
    def create(cls, cfg, overrides: list[str], job: str) -> RunFolder:
        """A new folder `<root>/<YYYYmmdd-HHMMSS>-<recipe>`; suffixed `-2`, `-3`, … if that name is taken
        (also by a concurrent process: the folder is claimed by an atomic mkdir)."""
        root = runs_root(cfg.run_dir)
        root.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.recipe or job}"
        # mkdir is the claim: of several processes starting in the same second exactly one gets each
        # name, the others move on to the next suffix (never exists()-then-mkdir, which races)
        for n in range(1, 10_000):
            path = root / (stem if n == 1 else f"{stem}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise UserError(f"could not create a run folder under {root}: {stem} and 9,999 suffixes are taken")
        lock_run_folder(path)  # before anything is written into it
        (path / "checkpoints").mkdir()
        run = cls(path)
        atomic_write_text(run.config_path, stored_yaml(OmegaConf.to_yaml(cfg)))  # with the version that wrote it
        atomic_write_text(path / "overrides.txt", " ".join([job, *overrides]) + "\n")
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        path = Path(path).expanduser().resolve()
        if not (path / "config.yaml").is_file():
            raise UserError(f"not a sparsetune run folder (no config.yaml): {path}")
        return cls(path)

    def lock(self) -> None:
        """Become this folder's one writer (see the module docstring); RunFolderBusyError if another
        process is."""
        lock_run_folder(self.path)

    def claim_for_resume(self) -> None:
        """Before a resume writes anything: become the folder's one writer and check its disk has room
        (the same free-space check a new run gets); one line (exit 2) otherwise."""
        self.lock()
        try:
            check_environment(self.path)
        except ConfigError as exc:
            raise ConfigError(f"cannot resume: {str(exc).removeprefix('run_dir: ')}") from None

    def in_use(self) -> bool:
        """Whether another process holds the lock (a run being written right now)."""
        if _key(self.path) in _held or not (self.path / LOCK).exists():
            return False
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing also drops a lock taken just now
        return False

    def resume_command(self) -> str | None:
        """`sparsetune train resume=RUN` for a train/prune run (forget runs are not resumable)."""
        words = (self.path / "overrides.txt").read_text().split() if (self.path / "overrides.txt").is_file() else []
        job = words[0] if words else "train"
        return f"sparsetune {job} resume={self.path}" if job in ("train", "prune") else None

    def load_raw_config(self):
        """config.yaml as stored; the jobs layer validates it against the schemas."""
        try:
            cfg = OmegaConf.load(self.config_path)
        except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise UserError(f"{self.config_path} is not a readable config ({reason})") from None
        if not OmegaConf.is_dict(cfg):
            raise UserError(f"{self.config_path} is not a config mapping")
        return cfg

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        check_present(self.path)
        try:
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str) + "\n")
        except OSError as exc:
            check_present(self.path)  # deleted during the write: say so
            if exc.errno not in DISK_ERRNOS:
                raise
            raise write_fault(self.summary_path, exc) from None
