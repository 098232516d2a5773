"""The sweep folder `<runs root>/sweeps/<name>/` and what it records:
  sweep.json          grid, points (overrides, status, run folder, headline metrics), command
  summary.md, *.png   the table and the plot of the swept metric (report.py, plots.py)
  logs/<point>.log    each point's console output
  <point>/            the point's runs root: its run folder(s) `<YYYYmmdd-HHMMSS>-<recipe>/` and point.json
A point is finished when its latest run has a summary.json and its point.json holds the same
overrides; a rerun into the folder (`sweep.dir=…` or `sweep.name=…`) reuses it through the pool's
done-check (launch.reuse_finished), and failed points run again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsetune.engine.run_folder import atomic_write_text, finished
from sparsetune.errors import ConfigError, UserError
from sparsetune.jobs.sweep import launch
from sparsetune.jobs.sweep.grid import Grid, Point, hydra_value, override_key, run_of
from sparsetune.jobs.sweep.report import default_metric, headline_metrics
from sparsetune.paths import runs_root

SWEEP_FILE = "sweep.json"
POINT_FILE = "point.json"


def _last_line(log: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:300] if len(lines) > 1 else None


def latest_run(root: Path) -> Path | None:
    """The newest run folder (by its config.yaml) in a point's runs root."""
    runs = [p for p in root.iterdir() if (p / "config.yaml").is_file()] if root.is_dir() else []
    return max(runs, key=lambda p: ((p / "config.yaml").stat().st_mtime_ns, p.name), default=None)


@dataclass
class Sweep:
    job: str
    folder: Path
    name: str
    grid: Grid
    settings: Any  # cfg.sweep
    launcher: str
    command: str
    child_args: list[str]
    in_place: bool  # eval run=…: points evaluate existing run folders, they create none

    @property
    def record_path(self) -> Path:
        return self.folder / SWEEP_FILE

    def point_root(self, point: Point) -> Path:
        return self.folder / point.id

    def log_path(self, point: Point) -> Path:
        return self.folder / "logs" / f"{point.id}.log"

    def argv(self, point: Point, threads: int | None) -> list[str]:
        """A point's command line: its overrides plus where its run goes, the W&B group and its threads."""
        extra = []
        keys = {override_key(o) for o in point.overrides}
        if not self.in_place:
            extra.append(f"run_dir={hydra_value(str(self.point_root(point)))}")
        if "logger.group" not in keys:
            extra.append(f"logger.group={hydra_value(self.name)}")
        if threads and "trainer.threads" not in keys:
            extra.append(f"trainer.threads={threads}")
        ovs = [o for o in point.overrides if override_key(o) != "run_dir"]
        return launch.child_argv(self.job, ovs, [*extra, *self.child_args])

    def task(self, point: Point, previous: dict[str, dict[str, Any]]) -> launch.Task:
        """The point as a pool task: built when it starts (it learns its threads then), reused when finished."""
        return launch.Task(point.id, lambda threads: self.argv(point, threads), self.log_path(point),
                           cwd=os.getcwd(), done=lambda: self.finished(point, previous))

    def prepare(self, point: Point) -> None:
        """The point's runs root and its point.json (the overrides the skip logic compares), before it runs."""
        if not self.in_place:
            root = self.point_root(point)
            root.mkdir(parents=True, exist_ok=True)

            atomic_write_text(root / POINT_FILE, json.dumps({"overrides": point.overrides, "params": point.params},
                                                            indent=2) + "\n")

    def write(self) -> None:
        record = {
            "name": self.name, "job": self.job, "command": self.command, "launcher": self.launcher,
            "jobs": int(self.settings.jobs), "metric": self.settings.metric,
            "grid": self.grid.swept, "fixed": self.grid.fixed,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "points": [asdict(p) for p in self.grid.points],
        }
        atomic_write_text(self.record_path, json.dumps(record, indent=2, default=str) + "\n")

    # --------------------------------------------------------------------------- finished points
    def previous(self) -> dict[str, dict[str, Any]]:
        """Points recorded by an earlier invocation in this folder, by id."""
        if not self.record_path.is_file():
            return {}
        try:
            old = json.loads(self.record_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        if old.get("job") not in (None, self.job):
            raise ConfigError(f"{self.folder} holds a `{old['job']}` sweep, not `{self.job}`; "
                              "give another sweep.dir or sweep.name")
        return {p.get("id"): p for p in old.get("points", []) if isinstance(p, dict)}

    def finished(self, point: Point, previous: dict[str, dict[str, Any]]) -> bool:
        """A point is finished when its run folder has summary.json and it ran these very overrides."""
        if self.in_place:
            old = previous.get(point.id) or {}
            return old.get("status") in ("done", "skipped") and old.get("overrides") == point.overrides
        root = self.point_root(point)
        try:
            ran = json.loads((root / POINT_FILE).read_text()).get("overrides")
        except (OSError, json.JSONDecodeError):
            return False
        run = latest_run(root)
        return ran == point.overrides and run is not None and finished(run)

    def collect(self, point: Point) -> None:
        """Status, run folder and headline metrics of a point from what is on disk."""
        if self.in_place:
            run = Path(run_of(point)).expanduser().resolve()
        else:
            run = latest_run(self.point_root(point))
        if run is not None:
            point.run = os.path.relpath(run, self.folder) if run.is_relative_to(self.folder) else str(run)
        summary = {}
        if run is not None and (run / "summary.json").is_file():
            try:
                summary = json.loads((run / "summary.json").read_text())
            except (OSError, json.JSONDecodeError):
                summary = {}
        point.metrics = headline_metrics(summary)
        if point.status == "pending":
            ok = point.returncode == 0 and (self.in_place or bool(summary))
            point.status = "done" if ok else "failed"
            if not ok:
                point.error = _last_line(self.log_path(point)) or point.error or (
                    "finished without a summary.json" if point.returncode == 0 else None)

    def finish(self, point: Point, console) -> None:
        """A point that ran: its status from disk, sweep.json rewritten, one console line."""
        self.collect(point)
        self.write()
        shown = " ".join(f"{k}={v}" for k, v in point.params.items()) or point.id
        total = len(self.grid.points)
        if point.status == "done":
            key = self.settings.metric or default_metric([{"metrics": point.metrics}])
            value = point.metrics.get(key) if key else None
            console.print(f"[green]done[/green]   [{point.index + 1}/{total}] {shown} in {point.seconds:.1f} s"
                          + (f" ({key}={value:.4g})" if value is not None else ""), soft_wrap=True)
        else:
            console.print(f"[red]failed[/red] [{point.index + 1}/{total}] {shown} (exit {point.returncode}): "
                          f"{point.error or 'see its log'}", soft_wrap=True)


def create_folder(cfg, job: str, grid: Grid) -> tuple[Path, str]:
    """The sweep folder and its name: `sweep.dir`, `sweep.name`, or a new timestamped one claimed by mkdir."""
    if cfg.sweep.dir:
        folder = Path(cfg.sweep.dir).expanduser().resolve()
        return folder, str(cfg.sweep.name or folder.name)
    root = runs_root(cfg.run_dir) / "sweeps"
    if cfg.sweep.name:
        return root / cfg.sweep.name, str(cfg.sweep.name)
    base = None if "recipe" in {override_key(k) for k in grid.swept} else cfg.recipe
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{base or job}"
    for n in range(1, 10_000):  # claimed by mkdir, like run folders
        name = stem if n == 1 else f"{stem}-{n}"
        try:
            (root / name).mkdir(parents=True)
            return root / name, name
        except FileExistsError:
            continue
    raise UserError(f"could not create a sweep folder under {root}")
