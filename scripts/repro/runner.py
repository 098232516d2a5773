"""Run the plan's commands through the normal CLI, one subprocess each, skipping finished ones.

Layout under the results root (results/full or results/quick):
    runs/<table>/<row>/seed<k>/<run folder>/summary.json     one SPARSETUNE_RUNS root per (row, seed)
    bench/<table>.json                                         `sparsetune bench … --out`
    logs/<table>/<row>-seed<k>.log                             the command's output
A (row, seed) is finished when its root holds a run folder with summary.json, a bench when its JSON
exists; anything else is (re)run, so an interrupted reproduction continues where it stopped.

With jobs > 1, that many (row, seed) commands run at once, each with cpu_count // jobs torch threads (a
row's follow-up command stays behind it in the same lane); benches always run afterwards, alone, with
every core, since their numbers are timings.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from repro.plan import CROSS_TEST_SIZE, QUICK_SEEDS, Bench, Run

PROJECT = "sparsetune-reproduce"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("²", "2")).strip("-")


@dataclass
class Layout:
    root: Path
    quick: bool
    jobs: int = 1  # (row, seed) commands run at once

    @property
    def threads_per_job(self) -> int:
        """Torch threads each of the `jobs` concurrent rows gets (the cores split evenly)."""
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def run_root(self, run: Run, seed: int) -> Path:
        return self.root / "runs" / run.table / slug(run.name) / f"seed{seed}"

    def bench_file(self, bench: Bench) -> Path:
        return self.root / "bench" / f"{slug(bench.name)}.json"

    def log_file(self, table: str, name: str) -> Path:
        return self.root / "logs" / table / f"{slug(name)}.log"

    @property
    def tasks_dir(self) -> Path:
        return self.root / "lm_tasks" / "tasks"

    def seeds(self, run: Run) -> tuple[int, ...]:
        """The seeds this mode runs a row with (none: the row is not part of QUICK)."""
        if not self.quick:
            return run.seeds
        return tuple(s for s in run.seeds if s in QUICK_SEEDS) if run.in_quick else ()

    def finished_run(self, run: Run, seed: int) -> Path | None:
        done = sorted(self.run_root(run, seed).glob("*/summary.json"))
        return done[-1].parent if done else None


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
    """The sparsetune command line of one (row, seed), as a user would type it."""
    argv = [a.replace("{tasks}", shown(layout.tasks_dir)) for a in run.argv]
    return merge_overrides(argv, run.quick if layout.quick else (),
                           (f"seed={seed}", f"logger.project={PROJECT}", f"logger.group={run.table}"))


def bench_command(bench: Bench, out: Path, quick: bool) -> list[str]:
    return ["bench", *bench.argv, *(bench.quick if quick else bench.full), "--out", shown(out)]


def _call(args: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        fh.write(f"$ sparsetune {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.call([sys.executable, "-m", "sparsetune.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                             env=env, cwd=PROJECT_ROOT)
    return rc, time.perf_counter() - start


def _tail(log: Path, n: int = 15) -> str:
    return "\n".join("    " + line for line in log.read_text(errors="replace").splitlines()[-n:])


def _then_done(folder: Path, run: Run) -> bool:
    import json

    summary = json.loads((folder / "summary.json").read_text())
    return run.then_key in summary


def then_command(run: Run, folder: Path, layout: Layout) -> list[str]:
    """The row's follow-up command on its finished run folder."""
    argv = [a.replace("{run}", shown(folder)) for a in run.then]
    return merge_overrides(argv, (f"logger.project={PROJECT}", f"logger.group={run.table}"))


Step = tuple[str, Callable[[], "list[str] | None"], dict[str, str], Path]  # label, argv, env, log


def _row_units(layout: Layout, runs: list[Run]) -> tuple[list[list[Step]], int]:
    """One unit per unfinished (row, seed): its command, then its follow-up; plus the count reused."""
    units: list[list[Step]] = []
    skipped = 0
    for run in runs:
        for seed in layout.seeds(run):
            unit: list[Step] = []
            folder = layout.finished_run(run, seed)
            env = dict(os.environ, SPARSETUNE_RUNS=str(layout.run_root(run, seed)))
            if folder is None:
                args = run_command(run, seed, layout)
                unit.append((f"{run.key} seed {seed}", lambda args=args: args, env,
                             layout.log_file(run.table, f"{run.name}-seed{seed}")))
            if run.then and (folder is None or not _then_done(folder, run)):
                def then_args(run=run, seed=seed) -> list[str] | None:
                    done = layout.finished_run(run, seed)
                    return then_command(run, done, layout) if done else None

                unit.append((f"{run.key} seed {seed} ({run.then[0]})", then_args, env,
                             layout.log_file(run.table, f"{run.name}-seed{seed}-{run.then[0]}")))
            elif folder is not None:
                skipped += 1
            if unit:
                units.append(unit)
    return units, skipped


def _threads_env(env: dict[str, str], threads: int) -> dict[str, str]:
    return dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def execute(layout: Layout, runs: list[Run], benches: list[Bench]) -> list[str]:
    """Run what is not finished; returns the failures (the rest still runs, the report marks them)."""
    units, skipped = _row_units(layout, runs)
    bench_steps: list[Step] = []
    for bench in benches:
        out = layout.bench_file(bench)
        if out.is_file():
            skipped += 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        args = bench_command(bench, out, layout.quick)
        bench_steps.append((bench.key, lambda args=args: args, dict(os.environ),
                            layout.log_file(bench.table, bench.name)))
    total = sum(map(len, units)) + len(bench_steps)
    print(f"{total} to run, {skipped} finished earlier (reused)"
          + (f"; rows {layout.jobs} at a time, benches alone" if layout.jobs > 1 else ""), flush=True)
    if any("{tasks}" in " ".join(r.argv) for r in runs):
        from repro.tasks import write_cross_tasks

        write_cross_tasks(layout.tasks_dir.parent, CROSS_TEST_SIZE["quick" if layout.quick else "full"])
    failures: list[str] = []
    counter = iter(range(1, total + 1))
    lock = threading.Lock()

    def step(label: str, make_args: Callable[[], list[str] | None], env: dict[str, str], log: Path) -> None:
        args = make_args()
        with lock:
            i = next(counter)
            if args is None:  # a follow-up whose first command failed
                print(f"[{i}/{total}] {label}: skipped (its run did not finish)", flush=True)
                failures.append(label)
                return
            print(f"[{i}/{total}] {label}: sparsetune {' '.join(args)}", flush=True)
        rc, seconds = _call(args, env, log)
        with lock:
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, log {log})"
            print(f"        {label}: {status} in {seconds:.0f} s", flush=True)
            if rc != 0:
                print(_tail(log), flush=True)
                failures.append(label)

    def lane(unit: list[Step]) -> None:
        for label, make_args, env, log in unit:
            step(label, make_args, _threads_env(env, layout.threads_per_job) if layout.jobs > 1 else env, log)

    if layout.jobs > 1:
        with ThreadPoolExecutor(layout.jobs) as pool:
            list(pool.map(lane, units))
    else:
        for unit in units:
            lane(unit)
    for bench_step in bench_steps:
        step(*bench_step)
    return failures
