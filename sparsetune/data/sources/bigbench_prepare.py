"""Fetch BIG-bench task files into the data cache (used by scripts/prepare_data.py and on first use).

BIG-bench 1.0.0 is on PyPI only as a 358 MB sdist. We fetch it from the package index's simple API
(sha256-checked; `pip download` as a fallback) into a temporary folder, stream through the archive once, keep only `bigbench/benchmark_tasks/<task>/task.json` (plus the
chosen subtask files) and delete the sdist. Text tasks are cached as one `<task>.json` (a subtask
task keeps its subtasks' task.json objects in a `subtasks` list); folder tasks (cifar10, read by the
vision source) keep bigbench's own `<task>/<subtask>/task.json` layout. Present tasks are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from sparsetune.errors import DataError
from sparsetune.paths import cache_dir

BIGBENCH_VERSION = "1.0.0"
# Text tasks the recipes use or the docs name; `prepare_data.py --all-default` fetches these.
DEFAULT_TASKS = ("strategyqa", "social_iqa", "winowhy", "elementary_math_qa", "date_understanding",
                 "physical_intuition", "arithmetic")
VISION_TASKS = ("cifar10_classification",)
# Subtasks to keep where they are views of the same items (elementary_math_qa: the same questions with
# or without hints, so mixing them would leak test questions into training; cifar10: base64 and hex of
# the same images). Tasks not listed keep every subtask (arithmetic: 20 disjoint operation/size sets).
SUBTASKS = {"elementary_math_qa": ("question_only",), "cifar10_classification": ("base64",)}
FOLDER_TASKS = frozenset({"cifar10_classification"})


def bigbench_cache(cache: Optional[os.PathLike] = None) -> Path:
    return Path(cache) if cache else cache_dir("data", "bigbench")


def is_prepared(task: str, cache: Path) -> bool:
    if task in FOLDER_TASKS:
        subs = SUBTASKS.get(task, ())
        return (cache / task / "task.json").is_file() and all(
            (cache / task / s / "task.json").is_file() for s in subs)
    return (cache / f"{task}.json").is_file()


SDIST = f"bigbench-{BIGBENCH_VERSION}.tar.gz"


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def fetch_sdist(dest: Path, quiet: bool = False) -> Path:
    """Download the sdist straight from the index's JSON simple API (PEP 691) and check its sha256.

    `pip download` cannot be used on its own: pip >= 25 builds the sdist's metadata even with
    --no-deps and rejects its `bleurt @ file://...` requirement.
    """
    import urllib.request

    req = urllib.request.Request(f"{_index_url()}/bigbench/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    entry = next((f for f in files if f["filename"] == SDIST), None)
    if entry is None:
        raise DataError(f"{SDIST} is not listed on {_index_url()}")
    target, digest = dest / SDIST, hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=60) as resp, open(target, "wb") as out:
        total = int(entry.get("size") or resp.headers.get("Content-Length") or 0)

        with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                      disable=quiet, transient=True) as bar:
            job = bar.add_task(f"downloading {SDIST}", total=total or None)
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.advance(job, len(chunk))
    want = entry.get("hashes", {}).get("sha256")
    if want and digest.hexdigest() != want:
        raise DataError(f"{SDIST}: sha256 mismatch (got {digest.hexdigest()}, index says {want})")
    return target


def pip_download_sdist(dest: Path, quiet: bool = False) -> Path:
    """`pip download` the sdist (works with pip < 25, and with indexes configured only for pip)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"bigbench=={BIGBENCH_VERSION}", "-d", str(dest), "--disable-pip-version-check"]
    if quiet:
        cmd.append("--quiet")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE,
                              text=True)
    except OSError as exc:
        raise DataError(f"could not run pip to download bigbench {BIGBENCH_VERSION}: {exc}") from None
    found = sorted(dest.glob("bigbench-*.tar.gz"))
    if proc.returncode != 0 or not found:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise DataError(f"could not download bigbench {BIGBENCH_VERSION} from PyPI: {reason}")
    return found[0]


def download_sdist(dest: Path, quiet: bool = False) -> Path:
    """The sdist in `dest`: from the index directly, else through pip."""
    try:
        return fetch_sdist(dest, quiet)
    except (OSError, ValueError, KeyError, DataError) as exc:
        if not quiet:
            print(f"direct download failed ({exc}); trying pip download", file=sys.stderr)
        for partial in dest.glob("*.tar.gz"):
            partial.unlink()
        return pip_download_sdist(dest, quiet)


class _CountingReader:
    """File wrapper that reports bytes read, so the extraction can show progress on the archive."""

    def __init__(self, handle, advance):
        self.handle, self.advance = handle, advance

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.advance(len(data))
        return data


def _member_task(name: str, wanted: set[str]) -> Optional[tuple[str, Optional[str]]]:
    """(task, subtask or None) for a wanted `.../benchmark_tasks/<task>[/<sub>]/task.json` member."""
    parts = name.split("/")
    if "benchmark_tasks" not in parts or parts[-1] != "task.json":
        return None
    rel = parts[parts.index("benchmark_tasks") + 1:]
    if not rel or rel[0] not in wanted or len(rel) not in (2, 3):
        return None
    if len(rel) == 2:
        return rel[0], None
    sub = rel[1]
    keep = SUBTASKS.get(rel[0])
    if sub in ("", ".", "..") or (keep is not None and sub not in keep):
        return None
    return rel[0], sub


def read_task_files(archive: Path, tasks: Iterable[str], show_progress: bool = True
                    ) -> dict[str, dict[Optional[str], bytes]]:
    """One streaming pass over the sdist: {task: {None: parent task.json, sub: subtask task.json}}."""
    wanted = set(tasks)
    found: dict[str, dict[Optional[str], bytes]] = {}
    columns = (TextColumn("extracting {task.description}"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress, \
            open(archive, "rb") as handle:
        bar = progress.add_task(archive.name, total=archive.stat().st_size)
        reader = _CountingReader(handle, lambda n: progress.advance(bar, n))
        try:
            with tarfile.open(fileobj=reader, mode="r|gz") as tar:
                for member in tar:
                    hit = _member_task(member.name, wanted) if member.isfile() else None
                    if hit is None:
                        continue
                    data = tar.extractfile(member)
                    if data is not None:
                        found.setdefault(hit[0], {})[hit[1]] = data.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{archive}: not a readable bigbench sdist ({exc})") from None
    return found


def _write(path: Path, data: bytes) -> None:
    """Write via a temporary name so an interrupted run never leaves a half file that looks prepared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def store_task(task: str, files: dict[Optional[str], bytes], cache: Path) -> Path:
    if None not in files:
        raise DataError(f"bigbench {BIGBENCH_VERSION}: task '{task}' has no task.json")
    if task in FOLDER_TASKS:
        for sub, data in sorted(files.items(), key=lambda kv: kv[0] or ""):
            if sub is not None:
                _write(cache / task / sub / "task.json", data)
        _write(cache / task / "task.json", files[None])  # last: marks the folder complete
        return cache / task
    spec = json.loads(files[None])
    subs = sorted(s for s in files if s is not None)
    if subs:
        spec["subtasks"] = [json.loads(files[s]) for s in subs]
    path = cache / f"{task}.json"
    _write(path, json.dumps(spec, ensure_ascii=False).encode("utf-8"))
    return path


def prepare_bigbench(tasks: Iterable[str], cache: Optional[os.PathLike] = None, sdist: Optional[os.PathLike] = None,
                     show_progress: bool = True) -> dict[str, Path]:
    """Make sure every task in `tasks` is in the cache; returns {task: cached path}.

    Downloads the sdist (unless `sdist` names a local copy) only when some task is missing.
    """
    cache = bigbench_cache(cache)
    tasks = list(dict.fromkeys(tasks))
    missing = [t for t in tasks if not is_prepared(t, cache)]
    if missing:
        with tempfile.TemporaryDirectory(prefix="sparsetune-bigbench-") as tmp:
            archive = Path(sdist) if sdist else download_sdist(Path(tmp), quiet=not show_progress)
            if not archive.is_file():
                raise DataError(f"bigbench sdist not found: {archive}")
            files = read_task_files(archive, missing, show_progress)
        absent = [t for t in missing if t not in files]
        if absent:
            raise DataError(f"bigbench {BIGBENCH_VERSION} has no task named {', '.join(absent)}")
        for task in missing:
            store_task(task, files[task], cache)
    return {t: (cache / t if t in FOLDER_TASKS else cache / f"{t}.json") for t in tasks}
