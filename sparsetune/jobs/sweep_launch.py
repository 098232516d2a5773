"""Running a sweep's points, each as the normal command line in its own process: a local pool
(`sweep.jobs=N`) or a Hydra launcher plugin (`hydra/launcher=submitit_slurm`). `sweep` arguments are
sweep.Sweep, not imported here because sweep.py imports this module.

Why a process per point: a point that crashes (out of memory, the NaN guard, a bad combination) must
not take the sweep down, and every point starts from a clean interpreter (seeds, threads, devices).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsetune.errors import ConfigError, UserError
from sparsetune.jobs.sweep_grid import (
    LAUNCHER_GROUP,
    Grid,
    Point,
    hydra_loader,
    hydra_value,
    one_line,
    override_key,
)

LOCAL_LAUNCHERS = ("local", "basic")  # basic: Hydra's in-process launcher; ours is the process pool
SLURM_EXTRA = "pip install 'sparsetune[slurm]'  (Hydra's submitit launcher plugin: hydra-submitit-launcher)"
POINT_KEY = "sweep_point"  # the one override a Hydra launcher job gets: the index of its point


def child_argv(job: str, overrides: Sequence[str], extra_args: Sequence[str] = ()) -> list[str]:
    """The normal command line for one point, in a fresh interpreter."""
    return [sys.executable, "-m", "sparsetune.cli", job, *overrides, *extra_args]


def point_argv(sweep, point: Point, threads: int | None) -> list[str]:
    """A point's command line: its overrides plus where its run goes, the W&B group and its threads."""
    extra = []
    keys = {override_key(o) for o in point.overrides}
    if not sweep.in_place:
        extra.append(f"run_dir={hydra_value(str(sweep.point_root(point)))}")
    if "logger.group" not in keys:
        extra.append(f"logger.group={hydra_value(sweep.name)}")
    if threads and "trainer.threads" not in keys:
        extra.append(f"trainer.threads={threads}")
    ovs = [o for o in point.overrides if override_key(o) != "run_dir"]
    return child_argv(sweep.job, ovs, [*extra, *sweep.child_args])


def run_child(argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: str | None = None,
              started=None) -> tuple[int, float]:
    """Run one point; its output goes to `log`. Returns (exit status, seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    with open(log, "w") as fh:
        shown = ["sparsetune", *argv[3:]] if list(argv[1:3]) == ["-m", "sparsetune.cli"] else list(argv)
        fh.write("$ " + " ".join(shown) + "\n")
        fh.flush()
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd)
        if started is not None:
            started(proc)
        rc = proc.wait()
    return rc, time.perf_counter() - tic


class PointTask:
    """What a Hydra launcher job runs (pickled to the cluster): the point named by `sweep_point`."""

    def __init__(self, argvs: dict[int, list[str]], logs: dict[int, str], cwd: str) -> None:
        self.argvs, self.logs, self.cwd = argvs, logs, cwd

    def __call__(self, cfg) -> dict[str, Any]:
        index = int(cfg[POINT_KEY])
        rc, seconds = run_child(self.argvs[index], Path(self.logs[index]), cwd=self.cwd)
        return {"returncode": rc, "seconds": seconds}


def latest_run(root: Path) -> Path | None:
    """The newest run folder (by its config.yaml) in a point's runs root."""
    runs = [p for p in root.iterdir() if (p / "config.yaml").is_file()] if root.is_dir() else []
    return max(runs, key=lambda p: ((p / "config.yaml").stat().st_mtime_ns, p.name), default=None)


def _threads_per_point(jobs: int) -> int | None:
    """Split this machine's CPUs between concurrent points (None: one point at a time keeps the default)."""
    if jobs <= 1:
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    return max(1, cpus // jobs)


def _announce(console, point: Point, total: int, metric: str | None) -> None:
    from sparsetune.jobs.sweep_report import default_metric

    shown = " ".join(f"{k}={v}" for k, v in point.params.items()) or point.id
    if point.status == "done":
        key = metric or default_metric([{"metrics": point.metrics}])
        value = point.metrics.get(key) if key else None
        console.print(f"[green]done[/green]   [{point.index + 1}/{total}] {shown} in {point.seconds:.1f} s"
                      + (f" ({key}={value:.4g})" if value is not None else ""), soft_wrap=True)
    else:
        console.print(f"[red]failed[/red] [{point.index + 1}/{total}] {shown} (exit {point.returncode}): "
                      f"{point.error or 'see its log'}", soft_wrap=True)


def run_local(sweep, todo: list[Point], console) -> None:
    """A pool of `sweep.jobs` child processes; a crash of one point is its own status, not the sweep's."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    jobs = min(int(sweep.settings.jobs), len(todo))
    threads = _threads_per_point(jobs)
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    running: dict[int, subprocess.Popen] = {}
    lock = threading.Lock()
    total = len(sweep.grid.points)

    def one(point: Point) -> Point:
        sweep.prepare(point)

        def started(proc):
            with lock:
                running[point.index] = proc

        point.returncode, point.seconds = run_child(point_argv(sweep, point, threads), sweep.log_path(point),
                                                    env=env, cwd=os.getcwd(), started=started)
        with lock:
            running.pop(point.index, None)
        return point

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sweep")
    futures = {pool.submit(one, p) for p in todo}
    try:
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            for fut in finished:
                point = fut.result()
                sweep.collect(point)
                sweep.write()
                _announce(console, point, total, sweep.settings.metric)
    except BaseException:
        for fut in futures:
            fut.cancel()
        with lock:
            for proc in running.values():
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------ Hydra launchers
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
    from hydra import compose
    from hydra.errors import HydraException

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
    from hydra._internal.callbacks import Callbacks  # what Hydra's own multirun passes its launcher
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext

    for point in todo:
        sweep.prepare(point)
    task = PointTask({p.index: point_argv(sweep, p, None) for p in todo},
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
            point.returncode = 0 if run is not None and (run / "summary.json").is_file() else -1
            point.error = None if point.returncode == 0 else "its job did not finish (see .submitit/)"
        elif ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, dict):
            point.returncode = ret.return_value["returncode"]
            point.seconds = ret.return_value["seconds"]
        else:
            point.returncode = -1
            point.error = one_line(ret._return_value) if ret._return_value is not None else "the job failed"
        sweep.collect(point)
        _announce(console, point, len(sweep.grid.points), sweep.settings.metric)
