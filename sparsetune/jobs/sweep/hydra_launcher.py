"""Running a sweep's points through a Hydra launcher plugin (`hydra/launcher=submitit_slurm`: one
SLURM job array) instead of the local pool: each job runs its point's normal command line on its node.
`sweep` arguments are `folder.Sweep`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose
from hydra._internal.callbacks import Callbacks
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.types import HydraContext

from sparsetune.engine.run_folder import finished
from sparsetune.errors import ConfigError, UserError
from sparsetune.jobs.sweep.folder import latest_run
from sparsetune.jobs.sweep.grid import (
    LAUNCHER_GROUP,
    Grid,
    Point,
    hydra_loader,
    hydra_value,
    one_line,
    override_key,
)
from sparsetune.jobs.sweep.launch import run_child

LOCAL_LAUNCHERS = ("local", "basic")  # basic: Hydra's in-process launcher; ours is the process pool
SLURM_EXTRA = "pip install 'sparsetune[slurm]'  (Hydra's submitit launcher plugin: hydra-submitit-launcher)"
POINT_KEY = "sweep_point"  # the one override a Hydra launcher job gets: the index of its point


class PointTask:
    """What a Hydra launcher job runs (pickled to the cluster): the point named by `sweep_point`."""

    def __init__(self, argvs: dict[int, list[str]], logs: dict[int, str], cwd: str) -> None:
        self.argvs, self.logs, self.cwd = argvs, logs, cwd

    def __call__(self, cfg) -> dict[str, Any]:
        index = int(cfg[POINT_KEY])
        rc, seconds = run_child(self.argvs[index], Path(self.logs[index]), cwd=self.cwd)
        return {"returncode": rc, "seconds": seconds}


def launcher_name(cfg, grid: Grid) -> str:
    given = [o.split("=", 1)[1] for o in grid.launcher if override_key(o) == LAUNCHER_GROUP]
    name = given[-1] if given else str(cfg.sweep.launcher)
    if given and any(override_key(o) == "sweep.launcher" for o in grid.settings) and name != cfg.sweep.launcher:
        raise ConfigError(f"sweep.launcher={cfg.sweep.launcher} and hydra/launcher={name} disagree; give one")
    if name in LOCAL_LAUNCHERS and any(override_key(o).startswith("hydra.launcher.") for o in grid.launcher):
        raise ConfigError("hydra.launcher.* settings need a launcher plugin, e.g. hydra/launcher=submitit_slurm")
    return name


def available_launchers(loader) -> list[str]:
    """Hydra's launcher options: `basic` and those of installed plugins (hydra_plugins.*)."""
    return list(loader.get_group_options(LAUNCHER_GROUP))


def launcher_config(name: str, launcher_overrides: Sequence[str], folder: Path, job_name: str):
    """Hydra's composed config with the launcher plugin selected (`hydra/launcher=NAME` plus
    `hydra.launcher.*`), as Hydra's own multirun composes it; one line when the plugin is missing."""
    overrides = [o for o in launcher_overrides if override_key(o) != LAUNCHER_GROUP]
    overrides = [f"{LAUNCHER_GROUP}={name}", *overrides,
                 f"hydra.sweep.dir={hydra_value(str(folder))}", "hydra.sweep.subdir=.launcher/${hydra.job.num}",
                 f"hydra.job.name={hydra_value(job_name)}", "hydra.job.chdir=false", "hydra.output_subdir=null"]
    with hydra_loader() as loader:
        available = available_launchers(loader)
        if name not in available:
            if name.startswith("submitit") and not any(a.startswith("submitit") for a in available):
                raise ConfigError(f"hydra/launcher={name} needs the submitit plugin: {SLURM_EXTRA}")
            raise ConfigError(f"unknown Hydra launcher '{name}'; installed: local (the process pool), "
                              + ", ".join(a for a in available if a not in LOCAL_LAUNCHERS))
        try:
            return compose("config", overrides=overrides, return_hydra_config=True)
        except (HydraException, ValueError) as exc:
            cause = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise ConfigError(f"hydra/launcher={name}: {one_line(cause).split(' full_key:')[0]}") from None


def run_hydra_launcher(sweep, todo: list[Point], console) -> None:
    """Hand the points to a Hydra launcher plugin (submitit_slurm: one SLURM array job); each job runs
    its point's command line on the node. Blocks until the jobs end, as Hydra's multirun does."""
    task = PointTask({p.index: sweep.argv(p, None) for p in todo},
                     {p.index: str(sweep.log_path(p)) for p in todo}, os.getcwd())
    cfg = launcher_config(sweep.launcher, sweep.grid.launcher, sweep.folder, f"sparsetune-{sweep.name}")
    with hydra_loader() as loader:
        HydraConfig.instance().set_config(cfg)
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(cfg)), task_function=task,
            config=cfg)
        console.print(f"submitting {len(todo)} points through hydra/launcher={sweep.launcher}; waiting for them")
        try:
            returns = launcher.launch([[f"+{POINT_KEY}={p.index}"] for p in todo], initial_job_idx=0)
        except Exception as exc:
            if not type(exc).__module__.startswith("submitit"):  # nothing submitted, e.g. no sbatch here
                raise UserError(f"hydra/launcher={sweep.launcher}: {one_line(exc)}") from None
            # a job died (time limit, preemption, node failure): what finished is on disk
            console.print(f"[yellow]hydra/launcher={sweep.launcher}: {one_line(exc)}[/yellow]", soft_wrap=True)
            returns = [None] * len(todo)
    for point, ret in zip(todo, returns):
        if ret is None:
            run = latest_run(sweep.point_root(point)) if not sweep.in_place else None
            point.returncode = 0 if run is not None and finished(run) else -1
            point.error = None if point.returncode == 0 else "its job did not finish (see .submitit/)"
        elif ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, dict):
            point.returncode = ret.return_value["returncode"]
            point.seconds = ret.return_value["seconds"]
        else:
            point.returncode = -1
            point.error = one_line(ret._return_value) if ret._return_value is not None else "the job failed"
        sweep.finish(point, console)
