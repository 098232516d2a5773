"""Sweeps (`sparsetune train -m …`): the entry points the CLI calls, the sweep folder and its
sweep.json, and the skip logic. The grid is sweep_grid.py, running the points sweep_launch.py, the
table and the plot sweep_report.py.

Sweep folder `<runs root>/sweeps/<name>/`:
  sweep.json          grid, points (overrides, status, run folder, headline metrics), command
  summary.md, *.png   the table and the plot of the swept metric (sweep_report.py)
  logs/<point>.log    each point's console output
  <point>/            the point's runs root: its run folder(s) `<YYYYmmdd-HHMMSS>-<recipe>/` and point.json
Rerunning into the same folder (`sweep.dir=…` or `sweep.name=…`) skips points whose latest run has a
summary.json and whose overrides are unchanged; failed points run again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsetune.errors import ConfigError, UserError
from sparsetune.jobs.sweep_grid import (
    LAUNCHER_GROUP,
    Grid,
    Point,
    compose_points,
    expand,
    override_key,
    run_of,
)
from sparsetune.jobs.sweep_launch import (
    LOCAL_LAUNCHERS,
    latest_run,
    launcher_config,
    launcher_name,
    run_hydra_launcher,
    run_local,
)

SWEEP_JOBS = ("train", "prune", "forget", "eval")
SWEEP_FILE = "sweep.json"
POINT_FILE = "point.json"


def _last_line(log: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:300] if len(lines) > 1 else None


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

    def prepare(self, point: Point) -> None:
        """The point's runs root and its point.json (the overrides the skip logic compares), before it runs."""
        if not self.in_place:
            root = self.point_root(point)
            root.mkdir(parents=True, exist_ok=True)
            from sparsetune.engine.run_folder import atomic_write_text

            atomic_write_text(root / POINT_FILE, json.dumps({"overrides": point.overrides, "params": point.params},
                                                            indent=2) + "\n")

    def write(self) -> None:
        from sparsetune.engine.run_folder import atomic_write_text

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
        return ran == point.overrides and run is not None and (run / "summary.json").is_file()

    def collect(self, point: Point) -> None:
        """Status, run folder and headline metrics of a point from what is on disk."""
        from sparsetune.jobs.sweep_report import headline_metrics

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


def _folder(cfg, job: str, grid: Grid) -> tuple[Path, str]:
    from sparsetune.paths import runs_root

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


def plan(job: str, overrides: Sequence[str], child_args: Sequence[str] = ()) -> tuple[Sweep, Any]:
    """Everything checked before a folder exists: the grid, every point's config, the launcher."""
    if job not in SWEEP_JOBS:
        raise UserError(f"`{job}` does not sweep; sweeps (-m) work with {', '.join(SWEEP_JOBS)}")
    grid = expand(overrides)
    in_place = job == "eval" and any(override_key(o) == "run" for o in [*grid.fixed, *grid.swept])
    if not grid.swept and not any(override_key(o) == LAUNCHER_GROUP for o in grid.launcher):
        raise ConfigError("-m: nothing to sweep; give values to sweep over, e.g. method.r=4,8 seed=range(3) "
                          "model=glob(tiny_*) (or drop -m to run one point)")
    if not grid.points:
        raise ConfigError("-m: the grid is empty")
    cfg = compose_points(job, grid, in_place)
    if cfg.sweep.x and cfg.sweep.x not in {override_key(k) for k in grid.swept}:
        raise ConfigError(f"sweep.x: '{cfg.sweep.x}' is not swept; swept keys: "
                          f"{', '.join(override_key(k) for k in grid.swept)}")
    launcher = launcher_name(cfg, grid)
    if launcher not in LOCAL_LAUNCHERS:
        launcher_config(launcher, grid.launcher, Path("."), "check")  # the plugin is there and takes these settings
    command = " ".join(["sparsetune", job, "-m", *overrides, *child_args])
    sweep = Sweep(job, Path(), "", grid, cfg.sweep, launcher, command, list(child_args), in_place)
    return sweep, cfg


def run_sweep(job: str, overrides: Sequence[str], child_args: Sequence[str] = (), show_cfg: bool = False) -> int:
    """Plan, run the unfinished points, write sweep.json and the report. Returns the exit status:
    0 when every point finished, 1 when some failed (they run again when the command is repeated)."""
    from sparsetune.engine.progress import console

    sweep, cfg = plan(job, overrides, child_args)
    if show_cfg:
        _print_points(sweep)
        return 0
    sweep.folder, sweep.name = _folder(cfg, job, sweep.grid)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    previous = sweep.previous()
    todo = []
    for point in sweep.grid.points:
        if sweep.finished(point, previous):
            point.status = "skipped"
            sweep.collect(point)
        else:
            todo.append(point)
    sweep.write()
    done_before = len(sweep.grid.points) - len(todo)
    console.print(f"sweep [bold]{sweep.name}[/bold]: {len(sweep.grid.points)} points"
                  + (f" ({done_before} finished earlier, skipped)" if done_before else "")
                  + (f", {sweep.settings.jobs} at a time" if sweep.launcher in LOCAL_LAUNCHERS and todo else "")
                  + (f", through hydra/launcher={sweep.launcher}" if sweep.launcher not in LOCAL_LAUNCHERS else "")
                  + f" → {sweep.folder}")
    try:
        if todo and sweep.launcher in LOCAL_LAUNCHERS:
            run_local(sweep, todo, console)
        elif todo:
            run_hydra_launcher(sweep, todo, console)
    finally:
        sweep.write()
    from sparsetune.jobs.sweep_report import report

    report(sweep.folder, json.loads(sweep.record_path.read_text()), metric=sweep.settings.metric,
           x=sweep.settings.x, console=console)
    failed = [p for p in sweep.grid.points if p.status == "failed"]
    console.print(f"[bold]sweep folder:[/bold] {sweep.folder}")
    if failed:
        console.print(f"[red]{len(failed)} of {len(sweep.grid.points)} points failed[/red] (logs in "
                      f"{sweep.folder / 'logs'}); the same command with sweep.dir={sweep.folder} runs them again")
        return 1
    return 0


def _print_points(sweep: Sweep) -> None:
    """`-m --cfg`: every point's command line (stdout, like `--cfg`), nothing run or created."""
    for point in sweep.grid.points:
        print(f"point {point.index} {point.id}: {' '.join([*point.overrides, *sweep.child_args])}")
