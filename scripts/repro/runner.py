"""Run the plan's commands through the normal CLI on the sweeps' process pool
(sparsetune/jobs/sweep/launch.py): one subprocess and one log per command, finished ones reused.

Layout under the results root (results/full or results/quick):
    runs/<table>/<row>/seed<k>/<run folder>/summary.json     one SPARSETUNE_RUNS root per (row, seed)
    bench/<table>.json                                         `sparsetune bench … --out`
    logs/<table>/<row>-seed<k>.log                             the command's output
A (row, seed) is finished when its root holds a run folder with summary.json, a bench when its JSON
exists; anything else is (re)run, so an interrupted reproduction continues where it stopped.

Each (row, seed) is one lane of the pool: its command, then its follow-up (which needs its run
folder). With jobs > 1 that many lanes run at once, the CPU threads split between them; benches
always run afterwards, alone, with every core, since their numbers are timings.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from repro.plan import CROSS_DATA, QUICK_SEEDS, SHARDS, Bench, Run, data_overrides
from sparsetune.engine.run_folder import finished
from sparsetune.jobs.sweep import launch
from sparsetune.jobs.sweep.launch import Task, reuse_finished, run_tasks, shown_command, thread_setting

PROJECT = "sparsetune-reproduce"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("²", "2")).strip("-")


@dataclass
class Layout:
    root: Path
    quick: bool
    jobs: int = 1  # (row, seed) commands run at once
    # run (and report) only these seeds of each row, e.g. (0,): a first pass that measures every row's cost;
    # a later run without it reuses them and adds the rest
    only_seeds: tuple[int, ...] | None = None

    @property
    def threads_per_job(self) -> int:
        """Torch threads each of the `jobs` concurrent rows gets (the pool's split of the cores)."""
        return thread_setting(self.jobs)

    def run_root(self, run: Run, seed: int) -> Path:
        run = run.same_as or run
        return self.root / "runs" / run.table / slug(run.name) / f"seed{seed}"

    def bench_file(self, bench: Bench) -> Path:
        return self.root / "bench" / f"{slug(bench.name)}.json"

    def log_file(self, table: str, name: str) -> Path:
        return self.root / "logs" / table / f"{slug(name)}.log"

    @property
    def timings_file(self) -> Path:
        """What each finished command took and each invocation's wall time (`record_time`, `timings`)."""
        return self.root / "timings.json"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "lm_tasks" / "tasks"

    def shard_dir(self, run: Run, seed: int) -> Path:
        """The held-out shard this (row, seed) scores: the seed's position among the row's seeds
        (repro/tasks.py: a row's seeds together score the whole pool)."""
        return self.tasks_dir / f"shard{(run.same_as or run).seeds.index(seed) % SHARDS}"

    def seeds(self, run: Run) -> tuple[int, ...]:
        """The seeds this mode runs a row with (none: the row is not part of QUICK), within `only_seeds`."""
        run = run.same_as or run
        if not self.quick:
            seeds = run.seeds
        else:
            seeds = tuple(s for s in run.seeds if s in QUICK_SEEDS) if run.in_quick else ()
        return seeds if self.only_seeds is None else tuple(s for s in seeds if s in self.only_seeds)

    def finished_run(self, run: Run, seed: int) -> Path | None:
        done = sorted(s.parent for s in self.run_root(run, seed).glob("*/summary.json") if finished(s.parent))
        return done[-1] if done else None


def timings(layout: Layout) -> dict:
    """{"tasks": {label: seconds}, "invocations": [{"date", "wall_s", "jobs", "commands"}]} so far."""
    path = layout.timings_file
    return json.loads(path.read_text()) if path.is_file() else {"tasks": {}, "invocations": []}


def record_time(layout: Layout, label: str | None = None, seconds: float | None = None,
                invocation: dict | None = None) -> None:
    """Add one finished command's seconds (kept across resumed invocations) or one invocation's record."""
    data = timings(layout)
    if label is not None:
        data["tasks"][label] = round(float(seconds or 0.0), 1)
    if invocation is not None:
        data["invocations"].append(invocation)
    layout.timings_file.parent.mkdir(parents=True, exist_ok=True)
    layout.timings_file.write_text(json.dumps(data, indent=1))


def lane_label(run: Run, seed: int) -> str:
    return f"{(run.same_as or run).key} seed {seed}"


def merge_overrides(*groups: tuple[str, ...] | list[str]) -> list[str]:
    """Concatenate key=value lists; a later value of the same key replaces the earlier one in place."""
    merged: dict[str, str] = {}
    for group in groups:
        for arg in group:
            key = arg.split("=", 1)[0] if "=" in arg else arg
            merged[key] = arg
    return list(merged.values())


def shown(path: Path) -> str:
    """A path relative to the project root (where every command runs) when it is inside it."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def run_command(run: Run, seed: int, layout: Layout) -> list[str]:
    """The sparsetune command line of one (row, seed), as a user would type it (a row read from another
    row's runs: that row's command)."""
    run = run.same_as or run
    argv = [a.replace("{tasks}", shown(layout.shard_dir(run, seed))) for a in run.argv]
    return merge_overrides(argv, run.quick if layout.quick else (),
                           (f"seed={seed}", f"logger.project={PROJECT}", f"logger.group={run.table}"))


def bench_command(bench: Bench, out: Path, quick: bool) -> list[str]:
    return ["bench", *bench.argv, *(bench.quick if quick else bench.full), "--out", shown(out)]


def _tail(log: Path, n: int = 15) -> str:
    return "\n".join("    " + line for line in log.read_text(errors="replace").splitlines()[-n:])


def _then_done(folder: Path, run: Run) -> bool:
    summary = json.loads((folder / "summary.json").read_text())
    return run.then_key in summary


def then_command(run: Run, folder: Path, layout: Layout) -> list[str]:
    """The row's follow-up command on its finished run folder."""
    argv = [a.replace("{run}", shown(folder)) for a in run.then]
    return merge_overrides(argv, (f"logger.project={PROJECT}", f"logger.group={run.table}"))


def _cli(args: list[str]) -> list[str]:
    return launch.child_argv(args[0], args[1:])


def _lane(layout: Layout, run: Run, seed: int) -> Task:
    """One (row, seed): its command, reused once its root holds a finished run, then its follow-up on
    that run folder (its command is built when it starts), reused once the summary has `then_key`."""
    env = {"SPARSETUNE_RUNS": str(layout.run_root(run, seed))}
    cwd = str(PROJECT_ROOT)
    task = Task(lane_label(run, seed), _cli(run_command(run, seed, layout)),
                layout.log_file(run.table, f"{run.name}-seed{seed}"), env=env, cwd=cwd,
                done=lambda: layout.finished_run(run, seed) is not None)
    if run.then:
        def then_args(threads: int | None) -> list[str] | None:
            done = layout.finished_run(run, seed)
            return _cli(then_command(run, done, layout)) if done else None

        def then_done() -> bool:
            folder = layout.finished_run(run, seed)
            return folder is not None and _then_done(folder, run)

        task.then = Task(f"{lane_label(run, seed)} ({run.then[0]})", then_args,
                         layout.log_file(run.table, f"{run.name}-seed{seed}-{run.then[0]}"), env=env, cwd=cwd,
                         done=then_done)
    return task


def _bench_task(layout: Layout, bench: Bench) -> Task:
    out = layout.bench_file(bench)
    return Task(bench.key, _cli(bench_command(bench, out, layout.quick)), layout.log_file(bench.table, bench.name),
                cwd=str(PROJECT_ROOT), done=out.is_file)


def execute(layout: Layout, runs: list[Run], benches: list[Bench]) -> list[str]:
    """Run what is not finished; returns the failures (the rest still runs, the report marks them)."""
    commanded = list({(r.same_as or r).key: r.same_as or r for r in runs}.values())  # each run once
    lanes = [_lane(layout, run, seed) for run in commanded for seed in layout.seeds(run)]
    bench_tasks = [_bench_task(layout, bench) for bench in benches]
    rows_todo, benches_todo = reuse_finished(lanes), reuse_finished(bench_tasks)
    skipped = sum(all(t.status == "reused" for t in lane.lane()) for lane in [*lanes, *bench_tasks])
    for bench in benches:
        layout.bench_file(bench).parent.mkdir(parents=True, exist_ok=True)
    total = sum(len(lane.lane()) for lane in rows_todo) + len(benches_todo)
    print(f"{total} to run, {skipped} finished earlier (reused)"
          + (f"; rows {layout.jobs} at a time, benches alone" if layout.jobs > 1 else ""), flush=True)
    if any("{tasks}" in " ".join(r.argv) for r in commanded):
        from repro.tasks import write_cross_tasks

        mode = "quick" if layout.quick else "full"
        write_cross_tasks(layout.tasks_dir.parent, {label: data_overrides(label, mode) for label in CROSS_DATA})
    failures: list[str] = []
    counter = iter(range(1, total + 1))

    def started(task: Task, argv: list[str]) -> None:
        print(f"[{next(counter)}/{total}] {task.label}: {shown_command(argv)}", flush=True)

    def finished(task: Task) -> None:
        if task.status == "blocked":  # a follow-up whose first command failed, or a command that cannot run
            print(f"[{next(counter)}/{total}] {task.label}: skipped (its run did not finish)", flush=True)
            failures.append(task.label)
            return
        if task.status == "stopped":  # this invocation's interrupt: not a failure, it runs next time
            if task.seconds is not None:
                print(f"        {task.label}: stopped after {task.seconds:.0f} s", flush=True)
            return
        status = "ok" if task.returncode == 0 else f"FAILED (exit {task.returncode}, log {task.log})"
        print(f"        {task.label}: {status} in {task.seconds:.0f} s", flush=True)
        if task.returncode == 0:
            record_time(layout, task.label, task.seconds)
        if task.returncode != 0:
            print(_tail(task.log), flush=True)
            failures.append(task.label)

    start, began, completed = time.monotonic(), datetime.now(timezone.utc), False
    try:
        run_tasks(rows_todo, layout.jobs, on_start=started, on_finish=finished)
        run_tasks(benches_todo, 1, on_start=started, on_finish=finished)  # alone, every core: timings
        completed = True
    finally:  # an interrupted invocation's wall clock counts too (the report adds every invocation's)
        if total:
            record_time(layout, invocation={"date": began.strftime("%Y-%m-%d %H:%M UTC"),
                                            "wall_s": round(time.monotonic() - start, 1), "jobs": layout.jobs,
                                            "commands": total, "failed": len(failures),
                                            **({} if completed else {"interrupted": True})})
    return failures
