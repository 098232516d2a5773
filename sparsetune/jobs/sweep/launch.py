"""The process pool that sweeps and the reproduction (scripts/reproduce.py) both run on: a list of
child commands, N at a time, each in its own process with its own log, environment and share of the
CPU threads. A task already finished (its `done()` says so) is reused, not run; a follow-up task
(`Task.then`) waits in its lane behind the task it needs and starts only when that one succeeded.

Why a process per task: a task that crashes (out of memory, the NaN guard, a bad combination) must
not take the others down, and every task starts from a clean interpreter (seeds, threads, devices).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch and the BLAS libraries size their pools from these


def child_argv(job: str, overrides: Sequence[str], extra_args: Sequence[str] = ()) -> list[str]:
    """The normal command line `sparsetune JOB …`, in a fresh interpreter."""
    return [sys.executable, "-m", "sparsetune.cli", job, *overrides, *extra_args]


def shown_command(argv: Sequence[str]) -> str:
    """A child's command as a user would type it (`sparsetune …` for the CLI)."""
    shown = ["sparsetune", *argv[3:]] if list(argv[1:3]) == ["-m", "sparsetune.cli"] else list(argv)
    return " ".join(shown)


def available_cpus() -> int:
    """The CPUs this process may use (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def threads_per_task(jobs: int) -> int | None:
    """The CPUs split between `jobs` concurrent tasks (None: one at a time keeps the default)."""
    return max(1, available_cpus() // jobs) if jobs > 1 else None


def thread_setting(jobs: int) -> int:
    """The threads each of `jobs` concurrent tasks gets: the user's OMP_NUM_THREADS when set (it wins
    over the split, see `run_tasks`), else the split, else every CPU."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if jobs > 1 and given.isdigit() and int(given) > 0:
        return int(given)
    return threads_per_task(jobs) or available_cpus()


@dataclass(eq=False)
class Task:
    """One child command. `argv` may be a callable: the command is then built when the task starts,
    from the threads it gets (None: the default); it returns None when the task cannot run."""

    label: str
    argv: Sequence[str] | Callable[[int | None], Sequence[str] | None]
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    cwd: str | None = None
    done: Callable[[], bool] | None = None  # finished by an earlier invocation: reused, not run
    then: Task | None = None  # a follow-up in the same lane, started once this one has succeeded
    # pending | reused | done | failed | blocked (never started: it could not run, or what it follows failed)
    # | stopped (an interrupt terminated it or kept it from starting: not a failure, it runs next time)
    status: str = "pending"
    returncode: int | None = None
    seconds: float | None = None

    def lane(self) -> list[Task]:
        """This task and its follow-ups, in order."""
        out, task = [], self
        while task is not None:
            out.append(task)
            task = task.then
        return out


def run_child(argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: str | None = None,
              started=None) -> tuple[int, float]:
    """Run one command; its output goes to `log`, whose first line is the command. Returns (exit status, seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + shown_command(argv) + "\n")
        fh.flush()
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd)
        if started is not None:
            started(proc)
        rc = proc.wait()
    return rc, time.perf_counter() - tic


def reuse_finished(lanes: Sequence[Task]) -> list[Task]:
    """Mark each lane's finished tasks `reused`, up to the first one that must run; returns the lanes
    that still have work, each starting at that task. What follows a task that runs runs too (it
    needs that task's fresh result)."""
    todo = []
    for head in lanes:
        task = head
        while task is not None and task.done is not None and task.done():
            task.status = "reused"
            task = task.then
        if task is not None:
            todo.append(task)
    return todo


def run_tasks(lanes: Sequence[Task], jobs: int, on_start: Callable[[Task, list[str]], None] | None = None,
              on_finish: Callable[[Task], None] | None = None) -> None:
    """Run the lanes, `jobs` at a time (never more than there are lanes). With more than one at a
    time, each child gets OMP_NUM_THREADS / MKL_NUM_THREADS = CPUs // jobs unless the environment (this
    process's, or the task's own) sets them. `on_start(task, argv)` and `on_finish(task)` are called one
    at a time. A failure is its task's status, not the pool's; on an interrupt the running children
    are terminated and nothing more starts (both `stopped`)."""
    if not lanes:
        return
    jobs = max(1, min(int(jobs), len(lanes)))
    threads = threads_per_task(jobs)
    running: dict[int, subprocess.Popen] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def finish(task: Task, status: str) -> None:
        task.status = status
        with lock:
            if on_finish is not None:
                on_finish(task)

    def one(task: Task) -> bool:
        argv = task.argv(threads) if callable(task.argv) else task.argv
        if argv is None or stop.is_set():
            finish(task, "stopped" if stop.is_set() else "blocked")
            return False
        env = {**os.environ, **task.env}
        for var in THREAD_VARS if threads else ():
            env.setdefault(var, str(threads))
        with lock:
            if on_start is not None:
                on_start(task, list(argv))

        def started(proc: subprocess.Popen) -> None:
            with lock:
                running[id(task)] = proc
                if stop.is_set():
                    proc.terminate()

        task.returncode, task.seconds = run_child(argv, task.log, env=env, cwd=task.cwd, started=started)
        with lock:
            running.pop(id(task), None)
        # a child terminated by our own interrupt did not fail: it was stopped, and runs again next time
        finish(task, "done" if task.returncode == 0 else "stopped" if stop.is_set() else "failed")
        return task.returncode == 0

    def lane(head: Task) -> None:
        tasks = head.lane()
        for i, task in enumerate(tasks):
            if not one(task):
                for rest in tasks[i + 1:]:  # a follow-up never starts without the task it needs
                    finish(rest, "stopped" if stop.is_set() else "blocked")
                return

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pool")
    futures = {pool.submit(lane, head) for head in lanes}
    try:
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            for fut in finished:
                fut.result()
    except BaseException:
        stop.set()
        for fut in futures:
            fut.cancel()
        with lock:
            for proc in running.values():
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True)
