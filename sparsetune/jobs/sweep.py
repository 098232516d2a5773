"""Sweeps (`sparsetune train -m …`): Hydra's override grammar expands the grid, each point runs as
the normal command line in its own process, and every point's run folder sits under one sweep folder.

Why a process per point: a point that crashes (out of memory, the NaN guard, a bad combination) must
not take the sweep down, and every point starts from a clean interpreter (seeds, threads, devices).
The grid comes from Hydra's own `OverridesParser` and sweep types (choices `a,b`, `range()`,
`glob()`, `choice()`, …), exactly as its BasicSweeper builds the cartesian product; the points run in
a local pool (`sweep.jobs=N`) or through a Hydra launcher plugin (`hydra/launcher=submitit_slurm`).

Sweep folder `<runs root>/sweeps/<name>/`:
  sweep.json          grid, points (overrides, status, run folder, headline metrics), command
  summary.md, *.png   the table and the plot of the swept metric (sweep_report.py)
  logs/<point>.log    each point's console output
  <point>/            the point's runs root: its run folder(s) `<YYYYmmdd-HHMMSS>-<recipe>/` and point.json
Rerunning into the same folder (`sweep.dir=…` or `sweep.name=…`) skips points whose latest run has a
summary.json and whose overrides are unchanged; failed points run again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparsetune.config.compose import RECIPES_DIR, SEARCHPATH_KEY
from sparsetune.errors import ConfigError, UserError

SWEEP_JOBS = ("train", "prune", "forget", "eval")
LOCAL_LAUNCHERS = ("local", "basic")  # basic: Hydra's in-process launcher; ours is the process pool
LAUNCHER_GROUP = "hydra/launcher"
SLURM_EXTRA = "pip install 'sparsetune[slurm]'  (Hydra's submitit launcher plugin: hydra-submitit-launcher)"
RAW_KEYS = ("run", "recipe")  # values the command line reads as text, not through Hydra's parser
POINT_KEY = "sweep_point"  # the one override a Hydra launcher job gets: the index of its point
SWEEP_FILE = "sweep.json"
POINT_FILE = "point.json"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:+-]+$")


@dataclass
class Point:
    index: int
    overrides: list[str]  # the point's command line: fixed overrides and its swept values, in the user's order
    params: dict[str, str]  # swept key -> this point's value (Hydra's string form)
    id: str  # folder and log name, from the swept values (Hydra's override_dirname style)
    status: str = "pending"  # pending | done | failed | skipped (finished by an earlier invocation)
    run: str | None = None  # run folder, relative to the sweep folder when inside it
    returncode: int | None = None
    seconds: float | None = None
    error: str | None = None  # last line of the point's output when it failed
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Grid:
    fixed: list[str]  # overrides every point gets
    swept: dict[str, list[str]]  # key -> values, in command-line order
    settings: list[str]  # sweep.* (the sweep's own settings; not passed to points)
    launcher: list[str]  # hydra/launcher=…, hydra.launcher.* (the launcher's; not passed to points)
    points: list[Point]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def _run_of(point) -> str:
    """The run folder an `eval run=…` point evaluates."""
    return _unquote(next(o.split("=", 1)[1] for o in point.overrides if _key(o) == "run"))


def hydra_value(value: str) -> str:
    """`value` as it may stand after `key=` in a Hydra override: quoted when it holds `,`, `=`, spaces, …"""
    if _SAFE_VALUE.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ------------------------------------------------------------------------------------ the grid
class _GroupOptions:
    """Hydra's config loader, asked for a group's options with the user's search path (`--config-dir`),
    so `glob(*)` also sees their option files."""

    def __init__(self, loader, searchpath: list[str]) -> None:
        self._loader = loader
        self._searchpath = searchpath

    def get_group_options(self, group_name, results_filter=None, config_name=None, overrides=None):
        from hydra.core.object_type import ObjectType

        names = self._loader.get_group_options(group_name, results_filter or ObjectType.CONFIG, "config",
                                               self._searchpath)
        return [n for n in names if not n.startswith("user__")]

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


@contextmanager
def _hydra_loader() -> Iterator[Any]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        yield GlobalHydra.instance().config_loader()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text.split(" See https://hydra.cc")[0]


def point_id(params: dict[str, str]) -> str:
    """`method.d_ratio=0.01,seed=0` (Hydra's override_dirname style), made safe for a folder name;
    a hash of the exact values is added when that changed anything or the name is long."""
    if not params:
        return "point"
    exact = ",".join(f"{k}={v}" for k, v in params.items())
    shown = ",".join(f"{k.lstrip('+~')}={Path(_unquote(v)).name if '/' in v else v}" for k, v in params.items())
    safe = re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", shown).strip("._-") or "point"
    if safe != exact or len(safe) > 80:
        safe = f"{safe[:80]}-{hashlib.sha1(exact.encode()).hexdigest()[:8]}"
    return safe


def expand(overrides: Sequence[str]) -> Grid:
    """The cartesian product of every sweep override, as Hydra's BasicSweeper builds it (a later
    override of the same key replaces an earlier one in its place); fixed overrides keep their
    original text."""
    from hydra.errors import HydraException

    searchpath = [o for o in overrides if _key(o) == SEARCHPATH_KEY]
    entries: dict[str, tuple[str, Any]] = {}
    settings, launcher = [], []
    with _hydra_loader() as loader:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create(config_loader=_GroupOptions(loader, searchpath))
        for raw in overrides:
            try:
                (ov,) = parser.parse_overrides([raw])
                sweep = ov.is_sweep_override()
                key, bare = ov.get_key_element(), _key(raw)
                if bare.startswith("sweep.") or bare == LAUNCHER_GROUP or bare.startswith("hydra.launcher."):
                    if sweep:
                        raise ConfigError(f"{bare} cannot be swept (it sets up the sweep itself)")
                    (settings if bare.startswith("sweep.") else launcher).append(raw)
                    continue
                if bare in ("resume", "run_dir", SEARCHPATH_KEY) and sweep:
                    raise ConfigError(f"{bare} cannot be swept")
                if bare == "resume":
                    raise ConfigError("resume= does not go with -m: rerun the sweep command (same sweep.dir) "
                                      "to run its unfinished points again")
                if not sweep:
                    entries[key] = ("fixed", raw)
                    continue
                if not ov.is_discrete_sweep():
                    raise ConfigError(f"{raw}: {ov.value_type.name.lower()} sweeps need an optimising sweeper; "
                                      "give values: a,b · range(0,3) · choice(a,b) · glob(*)")
                # run= and recipe= are read as plain text by the command line (a run folder, a recipe
                # file): their values go as they are; every other value keeps Hydra's quoted form
                values = ([getattr(v, "text", str(v)) for v in ov.sweep_iterator()] if bare in RAW_KEYS
                          else list(ov.sweep_string_iterator()))  # QuotedString.text: the unquoted value
            except ConfigError:
                raise
            except (HydraException, ValueError, TypeError) as exc:
                raise ConfigError(f"{raw}: {_one_line(exc)}") from None
            if not values:
                raise ConfigError(f"{raw}: the sweep gives no values"
                                  + (" (glob() matches option names of a config group: model, data, method, recipe, …)"
                                     if "glob(" in raw else ""))
            entries[key] = ("sweep", values)
    swept = {k: v for k, (kind, v) in entries.items() if kind == "sweep"}
    points = []
    for index, combo in enumerate(itertools.product(*swept.values())):
        params = dict(zip(swept, combo))
        ovs = [v if kind == "fixed" else f"{k}={params[k]}" for k, (kind, v) in entries.items()]
        points.append(Point(index, ovs, params, point_id(params)))
    fixed = [v for kind, v in entries.values() if kind == "fixed"]
    return Grid(fixed, swept, settings, launcher, points)


# ------------------------------------------------------------------------------------ one point
def child_argv(job: str, overrides: Sequence[str], extra_args: Sequence[str] = ()) -> list[str]:
    """The normal command line for one point, in a fresh interpreter."""
    return [sys.executable, "-m", "sparsetune.cli", job, *overrides, *extra_args]


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


# ------------------------------------------------------------------------------------ the sweep
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
        extra = []
        keys = {_key(o) for o in point.overrides}
        if not self.in_place:
            extra.append(f"run_dir={hydra_value(str(self.point_root(point)))}")
        if "logger.group" not in keys:
            extra.append(f"logger.group={hydra_value(self.name)}")
        if threads and "trainer.threads" not in keys:
            extra.append(f"trainer.threads={threads}")
        ovs = [o for o in point.overrides if _key(o) != "run_dir"]
        return child_argv(self.job, ovs, [*extra, *self.child_args])

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
            run = Path(_run_of(point)).expanduser().resolve()
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


def _threads_per_point(jobs: int) -> int | None:
    """Split this machine's CPUs between concurrent points (None: one point at a time keeps the default)."""
    if jobs <= 1:
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    return max(1, cpus // jobs)


def _compose_points(job: str, grid: Grid, in_place: bool):
    """Compose (and so validate) every point before anything runs, as Hydra's sweeper does; returns the
    first point's config (the sweep's own settings are the same for all)."""
    from sparsetune.engine.run_folder import RunFolder
    from sparsetune.jobs.config import compose_job

    first = None
    for point in grid.points:
        if in_place:
            RunFolder.open(_run_of(point))
            if first is None:  # the sweep's own settings; each point's eval.* are checked by its run's config
                first = compose_job([o for o in point.overrides if _key(o) != "run"] + grid.settings)
            continue
        try:
            cfg = compose_job([*point.overrides, *grid.settings])
        except ConfigError as exc:
            if len(grid.points) == 1 or not point.params:
                raise
            raise ConfigError(f"sweep point {point.id}: {exc}") from None
        first = first if first is not None else cfg
    return first


def _launcher_name(cfg, grid: Grid) -> str:
    given = [o.split("=", 1)[1] for o in grid.launcher if _key(o) == LAUNCHER_GROUP]
    name = given[-1] if given else str(cfg.sweep.launcher)
    if given and any(_key(o) == "sweep.launcher" for o in grid.settings) and name != cfg.sweep.launcher:
        raise ConfigError(f"sweep.launcher={cfg.sweep.launcher} and hydra/launcher={name} disagree; give one")
    if name in LOCAL_LAUNCHERS and any(_key(o).startswith("hydra.launcher.") for o in grid.launcher):
        raise ConfigError("hydra.launcher.* settings need a launcher plugin, e.g. hydra/launcher=submitit_slurm")
    return name


def _folder(cfg, job: str, grid: Grid) -> tuple[Path, str]:
    from sparsetune.paths import runs_root

    if cfg.sweep.dir:
        folder = Path(cfg.sweep.dir).expanduser().resolve()
        return folder, str(cfg.sweep.name or folder.name)
    root = runs_root(cfg.run_dir) / "sweeps"
    if cfg.sweep.name:
        return root / cfg.sweep.name, str(cfg.sweep.name)
    base = None if "recipe" in {_key(k) for k in grid.swept} else cfg.recipe
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
    in_place = job == "eval" and any(_key(o) == "run" for o in [*grid.fixed, *grid.swept])
    if not grid.swept and not any(_key(o) == LAUNCHER_GROUP for o in grid.launcher):
        raise ConfigError("-m: nothing to sweep; give values to sweep over, e.g. method.r=4,8 seed=range(3) "
                          "model=glob(tiny_*) (or drop -m to run one point)")
    if not grid.points:
        raise ConfigError("-m: the grid is empty")
    cfg = _compose_points(job, grid, in_place)
    if cfg.sweep.x and cfg.sweep.x not in {_key(k) for k in grid.swept}:
        raise ConfigError(f"sweep.x: '{cfg.sweep.x}' is not swept; swept keys: {', '.join(_key(k) for k in grid.swept)}")
    launcher = _launcher_name(cfg, grid)
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
            _run_local(sweep, todo, console)
        elif todo:
            _run_hydra_launcher(sweep, todo, console)
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


def _prepare(sweep: Sweep, point: Point) -> None:
    if not sweep.in_place:
        root = sweep.point_root(point)
        root.mkdir(parents=True, exist_ok=True)
        from sparsetune.engine.run_folder import atomic_write_text

        atomic_write_text(root / POINT_FILE, json.dumps({"overrides": point.overrides, "params": point.params},
                                                        indent=2) + "\n")


def _run_local(sweep: Sweep, todo: list[Point], console) -> None:
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
        _prepare(sweep, point)

        def started(proc):
            with lock:
                running[point.index] = proc

        point.returncode, point.seconds = run_child(sweep.argv(point, threads), sweep.log_path(point), env=env,
                                                    cwd=os.getcwd(), started=started)
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
def available_launchers(loader) -> list[str]:
    """Hydra's launcher options: `basic` and those of installed plugins (hydra_plugins.*)."""
    return list(loader.get_group_options(LAUNCHER_GROUP))


def launcher_config(name: str, launcher_overrides: Sequence[str], folder: Path, job_name: str):
    """Hydra's composed config with the launcher plugin selected (`hydra/launcher=NAME` plus
    `hydra.launcher.*`), as Hydra's own multirun composes it; one line when the plugin is missing."""
    from hydra import compose
    from hydra.errors import HydraException

    overrides = [o for o in launcher_overrides if _key(o) != LAUNCHER_GROUP]
    overrides = [f"{LAUNCHER_GROUP}={name}", *overrides,
                 f"hydra.sweep.dir={hydra_value(str(folder))}", "hydra.sweep.subdir=.launcher/${hydra.job.num}",
                 f"hydra.job.name={hydra_value(job_name)}", "hydra.job.chdir=false", "hydra.output_subdir=null"]
    with _hydra_loader() as loader:
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
            raise ConfigError(f"hydra/launcher={name}: {_one_line(cause).split(' full_key:')[0]}") from None


def _run_hydra_launcher(sweep: Sweep, todo: list[Point], console) -> None:
    """Hand the points to a Hydra launcher plugin (submitit_slurm: one SLURM array job); each job runs
    its point's command line on the node. Blocks until the jobs end, as Hydra's multirun does."""
    from hydra._internal.callbacks import Callbacks  # what Hydra's own multirun passes its launcher
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext

    for point in todo:
        _prepare(sweep, point)
    task = PointTask({p.index: sweep.argv(p, None) for p in todo}, {p.index: str(sweep.log_path(p)) for p in todo},
                     os.getcwd())
    cfg = launcher_config(sweep.launcher, sweep.grid.launcher, sweep.folder, f"sparsetune-{sweep.name}")
    with _hydra_loader() as loader:
        HydraConfig.instance().set_config(cfg)
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(cfg)), task_function=task,
            config=cfg)
        console.print(f"submitting {len(todo)} points through hydra/launcher={sweep.launcher}; waiting for them")
        try:
            returns = launcher.launch([[f"+{POINT_KEY}={p.index}"] for p in todo], initial_job_idx=0)
        except Exception as exc:
            if not type(exc).__module__.startswith("submitit"):  # nothing submitted, e.g. no sbatch here
                raise UserError(f"hydra/launcher={sweep.launcher}: {_one_line(exc)}") from None
            # a job died (time limit, preemption, node failure): what finished is on disk
            console.print(f"[yellow]hydra/launcher={sweep.launcher}: {_one_line(exc)}[/yellow]", soft_wrap=True)
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
            point.error = _one_line(ret._return_value) if ret._return_value is not None else "the job failed"
        sweep.collect(point)
        _announce(console, point, len(sweep.grid.points), sweep.settings.metric)
