"""The process pool that sweeps and the reproduction share (sparsetune/jobs/sweep/launch.py), on trivial
`python -c` children: N at a time with the CPU threads split, a log per task, finished tasks reused,
follow-ups behind their task in the same lane, an interrupt that stops the running children.
tests/jobs/test_sweep.py and tests/scripts/test_reproduce.py drive the same pool through a sweep and
through the reproduction runner."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from sparsetune.jobs.sweep import launch
from sparsetune.jobs.sweep.launch import Task, reuse_finished, run_tasks

# records its OMP/MKL threads and how many children were running beside it (a marker folder each,
# held 0.5 s), then prints its name and exits with the status given
CHILD = """
import json, os, sys, time
from pathlib import Path
probe, name, rc = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
me = probe / "running" / name
me.mkdir(parents=True)
seen = len(list(me.parent.iterdir()))
time.sleep(0.5)
seen = max(seen, len(list(me.parent.iterdir())))
me.rmdir()
with open(probe / "calls.jsonl", "a") as fh:
    fh.write(json.dumps({"name": name, "omp": os.environ.get("OMP_NUM_THREADS"),
                         "mkl": os.environ.get("MKL_NUM_THREADS"), "beside": seen}) + "\\n")
print("child", name)
sys.exit(rc)
"""


def child(probe: Path, name: str, rc: int = 0) -> list[str]:
    return [sys.executable, "-c", CHILD, str(probe), name, str(rc)]


def calls(probe: Path) -> dict[str, dict]:
    path = probe / "calls.jsonl"
    return {c["name"]: c for c in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


@pytest.fixture
def cpus4(monkeypatch):
    monkeypatch.setattr(launch, "available_cpus", lambda: 4)
    for var in launch.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)


def test_n_at_a_time_with_the_threads_split_and_a_log_each(tmp_path, cpus4):
    tasks = [Task(f"t{i}", child(tmp_path, f"t{i}"), tmp_path / "logs" / f"t{i}.log") for i in range(4)]
    tasks[3].env = {"OMP_NUM_THREADS": "3"}  # a task's own setting wins over the split
    started, finished = [], []
    run_tasks(tasks, 2, on_start=lambda t, argv: started.append(t.label), on_finish=lambda t: finished.append(t))
    seen = calls(tmp_path)
    assert max(c["beside"] for c in seen.values()) == 2  # two at a time, never three
    assert [seen[f"t{i}"]["omp"] for i in range(4)] == ["2", "2", "2", "3"]  # CPUs // jobs
    assert all(seen[f"t{i}"]["mkl"] == "2" for i in range(4))
    assert sorted(started) == ["t0", "t1", "t2", "t3"] and all(t.status == "done" for t in finished)
    log = (tmp_path / "logs" / "t0.log").read_text().splitlines()
    assert log[0].startswith(f"$ {sys.executable} -c") and log[-1] == "child t0"
    assert all(t.returncode == 0 and t.seconds >= 0.5 for t in tasks)


def test_one_at_a_time_leaves_the_threads_alone(tmp_path, cpus4):
    tasks = [Task(f"t{i}", child(tmp_path, f"t{i}"), tmp_path / f"t{i}.log") for i in range(2)]
    run_tasks(tasks, 1)
    assert [(c["omp"], c["beside"]) for c in calls(tmp_path).values()] == [(None, 1), (None, 1)]
    # more jobs than tasks: the split is by the tasks that can run at once
    run_tasks([Task("alone", child(tmp_path, "alone"), tmp_path / "alone.log")], 4)
    assert calls(tmp_path)["alone"]["omp"] is None


def test_the_users_own_thread_setting_wins_over_the_split(tmp_path, cpus4, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_tasks([Task(f"t{i}", child(tmp_path, f"t{i}"), tmp_path / f"t{i}.log") for i in range(2)], 2)
    assert [(c["omp"], c["mkl"]) for c in calls(tmp_path).values()] == [("1", "2"), ("1", "2")]
    assert launch.thread_setting(2) == 1 and launch.thread_setting(1) == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert launch.thread_setting(2) == 2 and launch.thread_setting(3) == 1


def test_finished_tasks_are_reused_and_follow_ups_wait_in_their_lane(tmp_path, cpus4):
    made = []

    def later(threads):  # built when it starts, with the threads it gets
        made.append(threads)
        return child(tmp_path, "b-then")

    a = Task("a", child(tmp_path, "a"), tmp_path / "a.log", done=lambda: True,
             then=Task("a-then", child(tmp_path, "a-then"), tmp_path / "a-then.log", done=lambda: False))
    b = Task("b", child(tmp_path, "b"), tmp_path / "b.log", done=lambda: False,
             then=Task("b-then", later, tmp_path / "b-then.log", done=lambda: True))  # its task reruns: so does it
    c = Task("c", child(tmp_path, "c", rc=3), tmp_path / "c.log",
             then=Task("c-then", child(tmp_path, "c-then"), tmp_path / "c-then.log"))
    d = Task("d", child(tmp_path, "d"), tmp_path / "d.log", done=lambda: True)
    e = Task("e", lambda threads: None, tmp_path / "e.log")  # cannot be built: never started
    todo = reuse_finished([a, b, c, d, e])
    assert todo == [a.then, b, c, e] and a.status == d.status == "reused"
    finished = []
    run_tasks(todo, 2, on_finish=lambda t: finished.append(t.label))
    assert set(calls(tmp_path)) == {"a-then", "b", "b-then", "c"}  # nothing reused ran again
    assert made == [2]
    assert (c.status, c.returncode) == ("failed", 3)
    assert c.then.status == "blocked" and not c.then.log.exists()  # behind a failure: never started
    assert e.status == "blocked" and b.then.status == "done"
    assert finished.index("b") < finished.index("b-then") and finished.index("c") < finished.index("c-then")


def test_an_interrupt_stops_the_running_children(tmp_path, cpus4):
    long = Task("long", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "long.log")
    late = Task("late", child(tmp_path, "late"), tmp_path / "late.log")
    crash = Task("crash", child(tmp_path, "crash"), tmp_path / "crash.log", then=late)

    def on_finish(task):
        if task.label == "crash":
            raise KeyboardInterrupt

    tic = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_tasks([long, crash], 2, on_finish=on_finish)
    assert time.perf_counter() - tic < 30
    assert long.returncode not in (None, 0)  # terminated, not waited for
    assert long.status == "stopped"  # our own interrupt: not a failure, it runs next time
    assert "late" not in calls(tmp_path)
