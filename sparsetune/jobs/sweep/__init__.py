"""Sweeps (`sparsetune train -m …`, `sparsetune sweep JOB …`): the entry points the CLI calls.

  grid.py            Hydra's override grammar → the points, every one composed before anything runs
  folder.py          the sweep folder, sweep.json, point.json, when a point is finished
  launch.py          the process pool (also the reproduction's, scripts/repro/runner.py): tasks N at a
                     time with the threads split, a log each, finished ones reused
  hydra_launcher.py  the points through a Hydra launcher plugin instead (submitit_slurm)
  report.py          points table, mean ± std over seeds, summary.md; plots.py the PNG
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsetune.engine.progress import console
from sparsetune.errors import ConfigError, UserError
from sparsetune.jobs.sweep.folder import Sweep, create_folder
from sparsetune.jobs.sweep.grid import LAUNCHER_GROUP, compose_points, expand, override_key
from sparsetune.jobs.sweep.hydra_launcher import (
    LOCAL_LAUNCHERS,
    launcher_config,
    launcher_name,
    run_hydra_launcher,
)
from sparsetune.jobs.sweep.launch import reuse_finished, run_tasks
from sparsetune.jobs.sweep.report import report

SWEEP_JOBS = ("train", "prune", "forget", "eval")


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
    sweep, cfg = plan(job, overrides, child_args)
    if show_cfg:
        _print_points(sweep)
        return 0
    sweep.folder, sweep.name = create_folder(cfg, job, sweep.grid)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    previous = sweep.previous()
    tasks = {sweep.task(p, previous): p for p in sweep.grid.points}
    todo_tasks = reuse_finished(list(tasks))
    todo = [tasks[t] for t in todo_tasks]
    for task, point in tasks.items():
        if task.status == "reused":
            point.status = "skipped"
            sweep.collect(point)
    sweep.write()
    done_before = len(sweep.grid.points) - len(todo)
    local = sweep.launcher in LOCAL_LAUNCHERS
    console.print(f"sweep [bold]{sweep.name}[/bold]: {len(sweep.grid.points)} points"
                  + (f" ({done_before} finished earlier, skipped)" if done_before else "")
                  + (f", {sweep.settings.jobs} at a time" if local and todo else "")
                  + (f", through hydra/launcher={sweep.launcher}" if not local else "")
                  + f" → {sweep.folder}")
    try:
        for point in todo:
            sweep.prepare(point)
        if todo and local:
            def finished(task) -> None:
                if task.status in ("blocked", "stopped"):  # interrupted: stays pending, runs next time
                    return
                point = tasks[task]
                point.returncode, point.seconds = task.returncode, task.seconds
                sweep.finish(point, console)

            run_tasks(todo_tasks, int(sweep.settings.jobs), on_finish=finished)
        elif todo:
            run_hydra_launcher(sweep, todo, console)
    finally:
        sweep.write()

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
