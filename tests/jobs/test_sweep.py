"""Sweeps (`sparsetune train -m …`): Hydra's grammar expands the grid; every point is its own process
with its run folder under one sweep folder; sweep.json, the table and the plot; reruns skip finished
points and rerun failed ones; the submitit launcher composes.

Most tests swap the child command (`sweep.launch.child_argv`) for a small script that writes a run folder
the way the CLI does, in milliseconds; `test_real_2x2_sweep` (slow) runs the real CLI on a tiny model.
"""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
from pathlib import Path

import pytest

import sparsetune.jobs.sweep as sweep_package
from sparsetune.cli import main
from sparsetune.jobs.sweep import hydra_launcher, launch
from sparsetune.jobs.sweep.grid import expand
from sparsetune.jobs.sweep.hydra_launcher import launcher_config
from sparsetune.jobs.sweep.report import groups, seed_rows

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "eval=none", "trainer.max_steps=1",
        "trainer.batch_size=2"]

# Stands in for `python -m sparsetune.cli JOB …`: a run folder under run_dir= with config.yaml and
# overrides.txt, then summary.json with a score that depends on method.r and seed; the point named
# in $FAKE_FAIL exits 1 before its summary (as a crashed run would), the one in $FAKE_DIVERGE writes a
# diverged run's summary.json and exits 3 (as the engine's divergence guard does). Every call is appended to $FAKE_CALLS;
# with $FAKE_PROBE, its OMP_NUM_THREADS and how many points ran beside it go to $FAKE_PROBE/env.jsonl.
FAKE_CLI = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    job, args = sys.argv[1], sys.argv[2:]
    ov = dict(a.split("=", 1) for a in args if "=" in a)
    with open(os.environ["FAKE_CALLS"], "a") as fh:
        fh.write(json.dumps(args) + "\\n")
    if os.environ.get("FAKE_PROBE"):  # its threads and how many points run beside it (a marker each, 0.5 s)
        probe = Path(os.environ["FAKE_PROBE"])
        me = probe / "running" / str(os.getpid())
        me.mkdir(parents=True)
        seen = len(list(me.parent.iterdir()))
        time.sleep(0.5)
        seen = max(seen, len(list(me.parent.iterdir())))
        me.rmdir()
        with open(probe / "env.jsonl", "a") as fh:
            fh.write(json.dumps({"omp": os.environ.get("OMP_NUM_THREADS"), "beside": seen}) + "\\n")
    if job == "eval" and "run" in ov:
        run = Path(ov["run"])
    else:
        root = Path(ov["run_dir"].strip("'"))
        root.mkdir(parents=True, exist_ok=True)
        run = root / f"{time.strftime('%Y%m%d-%H%M%S')}-fake-{len(list(root.iterdir()))}"
        run.mkdir()
        (run / "config.yaml").write_text("seed: 0\\n")
        (run / "overrides.txt").write_text(" ".join([job, *args]) + "\\n")
    point = f"method.r={ov.get('method.r')},seed={ov.get('seed')}"
    if point == os.environ.get("FAKE_FAIL"):
        print("error: boom at " + point)
        sys.exit(1)
    if point == os.environ.get("FAKE_DIVERGE"):
        (run / "summary.json").write_text(json.dumps({"status": "diverged", "diverged_at_step": 2}))
        print("error: training diverged at step 2")
        sys.exit(3)
    r, seed = float(ov.get("method.r", 1)), float(ov.get("seed", 0))
    summary = {"method": "lora", "train_loss": 1 / r + seed, "step_time_s": 0.1,
               "eval": {"average": {"score": r / 10 + seed / 100, "n": 8.0}}}
    (run / "summary.json").write_text(json.dumps(summary))
    print("run folder:", run)
""")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Points run FAKE_CLI instead of the real command line; returns a reader of the calls made."""
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setattr(launch, "child_argv",
                        lambda job, overrides, extra=(): [sys.executable, str(script), job, *overrides, *extra])

    def read() -> list[list[str]]:
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return read


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def the_sweep(runs: Path) -> Path:
    (folder,) = list((runs / "sweeps").iterdir())
    return folder


# ------------------------------------------------------------------------------------ the grammar
def test_grammar_expands_choices_ranges_globs_like_hydra():
    grid = expand(["model=glob([tiny_l*,tiny_q*])", "data=synthetic_arith", "seed=range(0,3)",
                   "method.r=choice(4,8)", "trainer.lr=1e-4,3e-4", "data=synthetic_arith", "sweep.jobs=2"])
    assert grid.swept == {"model": ["tiny_llama", "tiny_qwen2"], "seed": ["0", "1", "2"], "method.r": ["4", "8"],
                          "trainer.lr": ["0.0001", "0.0003"]}
    assert grid.fixed == ["data=synthetic_arith"] and grid.settings == ["sweep.jobs=2"]
    assert len(grid.points) == 2 * 3 * 2 * 2
    # BasicSweeper's order: the product in command-line order, the last key fastest; fixed keys in place
    assert grid.points[0].overrides == ["model=tiny_llama", "data=synthetic_arith", "seed=0", "method.r=4",
                                        "trainer.lr=0.0001"]
    assert grid.points[1].params == {"model": "tiny_llama", "seed": "0", "method.r": "4", "trainer.lr": "0.0003"}
    assert grid.points[-1].id == "model=tiny_qwen2,seed=2,method.r=8,trainer.lr=0.0003"
    assert len({p.id for p in grid.points}) == len(grid.points)
    # a later override of a swept key replaces it where it first stood (as in Hydra's BasicSweeper)
    assert expand(["seed=0,1", "method=lora", "seed=5,6,7"]).swept == {"seed": ["5", "6", "7"]}
    # quoted values and paths keep Hydra's string form; the folder name stays safe and unique
    (a, b) = expand(["data.path='/x/a,b.jsonl','/y/c.jsonl'"]).points
    assert a.overrides == ["data.path='/x/a,b.jsonl'"] and "/" not in a.id and a.id != b.id


def test_glob_sees_the_users_config_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny_mine.yaml").write_text("name: tiny_mine\n")
    from sparsetune.config.compose import searchpath_override

    grid = expand(["model=glob(tiny_m*)", searchpath_override([tmp_path])])
    assert grid.swept == {"model": ["tiny_mine", "tiny_mistral"]}


@pytest.mark.parametrize("args,needle", [
    (["seed=0"], "nothing to sweep"),
    (["trainer.lr=interval(0,1)"], "interval_sweep sweeps need"),
    (["seed=0,1", "sweep.jobs=1,2"], "sweep.jobs cannot be swept"),
    (["seed=0,1", "resume=runs/x"], "resume= does not go with -m"),
    (["seed=0,1", "trainer.lr=fast"], "sweep point seed=0: trainer.lr"),
    (["seed=0,1", "sweep.x=method.r"], "sweep.x: 'method.r' is not swept"),
    (["seed=0,1", "sweep.jobs=0"], "sweep.jobs: 0 is not valid"),
    (["seed=0,1", "hydra/launcher=nope"], "unknown Hydra launcher 'nope'"),
    (["seed=0,1", "hydra.launcher.partition=gpu"], "need a launcher plugin"),
    (["model=glob(nothing*)"], "the sweep gives no values"),
])
def test_bad_sweeps_are_one_line_and_create_nothing(capsys, args, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    code, _, err = run_cli(capsys, "train", "-m", *TINY, *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "runs").exists()


def test_missing_submitit_plugin_names_the_extra(capsys, monkeypatch):
    monkeypatch.setattr(hydra_launcher, "available_launchers", lambda loader: ["basic"])
    code, _, err = run_cli(capsys, "train", "-m", *TINY, "seed=0,1", "hydra/launcher=submitit_slurm")
    assert code == 2 and err.count("\n") == 1 and "pip install 'sparsetune[slurm]'" in err, err


# ------------------------------------------------------------------------------------ running a grid
def test_2x2_sweep_gives_four_runs_sweep_json_table_and_plot(fake, capsys, monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    monkeypatch.setenv("SPARSETUNE_RUNS", str(runs))
    code, out, _ = run_cli(capsys, "train", "-m", *TINY, "method=lora", "method.r=4,8", "seed=0,1", "sweep.jobs=2")
    assert code == 0, out
    folder = the_sweep(runs)
    record = json.loads((folder / "sweep.json").read_text())
    assert folder.name.endswith("-train") and record["name"] == folder.name
    assert record["grid"] == {"method.r": ["4", "8"], "seed": ["0", "1"]}
    assert [p["status"] for p in record["points"]] == ["done"] * 4
    # four normal run folders, one per point, each under the sweep folder
    for p in record["points"]:
        run = folder / p["run"]
        assert run.parent.parent == folder and (run / "summary.json").is_file()
        r, seed = int(p["params"]["method.r"]), int(p["params"]["seed"])
        assert p["metrics"]["eval/average/score"] == pytest.approx(r / 10 + seed / 100)
    assert len({p["run"] for p in record["points"]}) == 4
    # each point got its own overrides, the shared W&B group, its runs root and half the CPUs
    calls = fake()
    assert sorted(tuple(a for a in c if a.startswith(("method.r=", "seed="))) for c in calls) == [
        ("method.r=4", "seed=0"), ("method.r=4", "seed=1"), ("method.r=8", "seed=0"), ("method.r=8", "seed=1")]
    assert all(f"logger.group={folder.name}" in c for c in calls)
    assert all(any(a.startswith("trainer.threads=") for a in c) for c in calls)
    # the table (console + markdown) and the plot of the default metric, mean ± std over the two seeds
    assert "eval/average/score" in out and "mean ± std over seeds" in out
    md = (folder / "summary.md").read_text()
    assert "| point |" in md and md.count("| done |") == 4 and "eval_average_score.png" in md
    png = folder / "eval_average_score.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_rerun_skips_finished_points_and_reruns_the_failed_one(fake, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FAKE_FAIL", "method.r=8,seed=1")
    args = ["train", "-m", *TINY, "method=lora", "method.r=4,8", "seed=0,1", "sweep.name=grid"]
    code, _, err = run_cli(capsys, *args)
    folder = tmp_path / "runs" / "sweeps" / "grid"
    record = json.loads((folder / "sweep.json").read_text())
    assert code == 1 and "1 of 4 points failed" in err and "boom" in err
    assert [p["status"] for p in record["points"]] == ["done", "done", "done", "failed"]
    assert "boom" in record["points"][3]["error"] and (folder / "logs" / "method.r=8,seed=1.log").is_file()
    assert len(fake()) == 4

    monkeypatch.delenv("FAKE_FAIL")
    code, out, _ = run_cli(capsys, *args)  # the same name: the same folder
    assert code == 0
    assert len(fake()) == 5 and "method.r=8" in fake()[-1] and "seed=1" in fake()[-1]
    record = json.loads((folder / "sweep.json").read_text())
    assert [p["status"] for p in record["points"]] == ["skipped", "skipped", "skipped", "done"]
    assert record["points"][0]["metrics"]["eval/average/score"] == pytest.approx(0.4)  # read again from disk

    # sweep.dir= reaches the same folder; a grown grid runs only its new points
    code, _, _ = run_cli(capsys, "train", "-m", *TINY, "method=lora", "method.r=4,8", "seed=0,1,2",
                         f"sweep.dir={folder}")
    assert code == 0 and len(fake()) == 7 and all("seed=2" in c for c in fake()[5:])
    # a changed fixed override is another experiment: nothing counts as finished
    code, _, _ = run_cli(capsys, *args, "trainer.lr=0.001")
    assert code == 0 and len(fake()) == 11


def test_an_interrupted_point_stays_pending_and_runs_next_time(fake, capsys, monkeypatch, tmp_path):
    """Ctrl-C / SIGTERM terminates the running points: they were stopped, not failed, and the same
    command runs them again."""
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))

    def interrupted(tasks, jobs, on_start=None, on_finish=None):
        tasks[0].status, tasks[0].returncode, tasks[0].seconds = "stopped", -15, 1.0  # terminated by the pool
        on_finish(tasks[0])
        raise KeyboardInterrupt

    args = ["train", "-m", *TINY, "method=lora", "method.r=4,8", "seed=0", "sweep.name=stop"]
    with monkeypatch.context() as patch:
        patch.setattr(sweep_package, "run_tasks", interrupted)
        code, _, _ = run_cli(capsys, *args)
    record = json.loads((tmp_path / "runs" / "sweeps" / "stop" / "sweep.json").read_text())
    assert code == 130 and [p["status"] for p in record["points"]] == ["pending", "pending"]
    code, _, _ = run_cli(capsys, *args)
    assert code == 0 and len(fake()) == 2


def test_a_diverged_point_is_failed_and_runs_again(fake, capsys, monkeypatch, tmp_path):
    """A diverged run leaves a summary.json that says so: the point is failed, and a rerun runs it again."""
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FAKE_DIVERGE", "method.r=8,seed=0")
    args = ["train", "-m", *TINY, "method=lora", "method.r=4,8", "seed=0", "sweep.name=div"]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "1 of 2 points failed" in err
    monkeypatch.delenv("FAKE_DIVERGE")
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and len(fake()) == 3 and "method.r=8" in fake()[-1]


def test_the_pool_runs_jobs_points_at_a_time_with_the_threads_split(fake, capsys, monkeypatch, tmp_path):
    """sweep.jobs=2 on 4 CPUs: two points at once (the shared pool, launch.run_tasks), each with
    trainer.threads=2 and OMP_NUM_THREADS=2; the same command again reuses all four."""
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FAKE_PROBE", str(tmp_path / "probe"))
    monkeypatch.setattr(launch, "available_cpus", lambda: 4)
    for var in launch.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    args = ["train", "-m", *TINY, "method=lora", "method.r=4,8", "seed=0,1", "sweep.jobs=2", "sweep.name=pool"]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    probed = [json.loads(line) for line in (tmp_path / "probe" / "env.jsonl").read_text().splitlines()]
    assert len(probed) == 4 and max(p["beside"] for p in probed) == 2
    assert {p["omp"] for p in probed} == {"2"} and all("trainer.threads=2" in c for c in fake())
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "4 finished earlier, skipped" in err and len(fake()) == 4


def test_sweep_command_is_a_synonym_and_cfg_lists_points(capsys):
    grid = ["method=lora", "method.r=4,8", "seed=range(2)"]
    code, out_m, _ = run_cli(capsys, "train", "-m", *TINY, *grid, "--cfg")
    code2, out_s, _ = run_cli(capsys, "sweep", "train", *TINY, *grid, "--cfg")
    assert code == code2 == 0 and out_m == out_s
    assert out_m.count("point ") == 4 and "method.r=8 seed=1" in out_m


def test_eval_sweep_over_run_folders_evaluates_them_in_place(fake, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    runs = []
    for name in ("a", "b"):
        run = tmp_path / f"{name}=1,2"  # a folder name Hydra must see quoted
        run.mkdir()
        (run / "config.yaml").write_text("seed: 0\n")
        runs.append(str(run))
    code, _, _ = run_cli(capsys, "eval", "-m", f"run='{runs[0]}','{runs[1]}'", "eval.limit=4", "sweep.name=ev")
    assert code == 0
    assert sorted(a for c in fake() for a in c if a.startswith("run=")) == [f"run={r}" for r in runs]  # unquoted
    record = json.loads((tmp_path / "runs" / "sweeps" / "ev" / "sweep.json").read_text())
    assert [p["run"] for p in record["points"]] == runs and all(p["status"] == "done" for p in record["points"])
    assert all(not any(a.startswith("run_dir=") for a in c) for c in fake())  # no new run folders
    code, _, _ = run_cli(capsys, "eval", "-m", f"run='{runs[0]}','{runs[1]}'", "eval.limit=4", "sweep.name=ev")
    assert code == 0 and len(fake()) == 2


# ------------------------------------------------------------------------------------ the report
def test_seed_aggregation_is_mean_and_sample_std():
    points = []
    for i, (r, seed, score) in enumerate([(4, 0, 0.5), (4, 1, 0.7), (4, 2, 0.9), (8, 0, 0.1), (8, 1, 0.2),
                                          (8, 2, None)]):
        points.append({"index": i, "params": {"method.r": str(r), "seed": str(seed)},
                       "status": "failed" if score is None else "done",
                       "metrics": {} if score is None else {"acc": score}})
    record = {"name": "s", "grid": {"method.r": ["4", "8"], "seed": ["0", "1", "2"]}, "points": points}
    lines, x = groups(record, "acc")
    assert x == "method.r" and lines == {"acc": {"4": [0.5, 0.7, 0.9], "8": [0.1, 0.2]}}
    rows = seed_rows(record, "acc")
    assert rows["method.r=4"]["acc mean"] == pytest.approx(0.7)
    assert rows["method.r=4"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert rows["method.r=8"]["seeds"] == 2  # the failed point is left out, not counted as zero
    points[4]["status"] = "failed"  # one seed left: no std to show (not a std of 0)
    assert seed_rows(record, "acc")["method.r=8"] == {"acc mean": 0.1, "std": None, "seeds": 1}


# ------------------------------------------------------------------------------------ SLURM through submitit
def test_submitit_slurm_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = launcher_config("submitit_slurm", ["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1",
                                             "hydra.launcher.timeout_min=240"], tmp_path / "sw eep", "sparsetune-x")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.submitit_folder == f"{tmp_path / 'sw eep'}/.submitit/%j" and launcher.name == "sparsetune-x"
    from hydra.utils import instantiate

    plugin = instantiate(launcher)  # the plugin class itself takes these settings
    assert type(plugin).__name__ == "SlurmLauncher" and plugin.params["partition"] == "gpu"


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_points(fake, capsys, monkeypatch, tmp_path):
    """The launcher path end to end without a cluster: submitit's local executor (the same plugin code
    as SLURM, other executor) unpickles each job and runs its point's command line."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    code, _, err = run_cli(capsys, "train", "-m", *TINY, "method=lora", "method.r=4,8", "sweep.name=sl",
                           "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    folder = tmp_path / "runs" / "sweeps" / "sl"
    assert code == 0, err
    record = json.loads((folder / "sweep.json").read_text())
    assert record["launcher"] == "submitit_local" and [p["status"] for p in record["points"]] == ["done", "done"]
    assert len(fake()) == 2 and all("logger.group=sl" in c for c in fake())
    assert (folder / ".submitit").is_dir()


@pytest.mark.slow
def test_real_2x2_sweep_then_rerun_skips_everything(capsys, monkeypatch, tmp_path):
    """The real command line per point on the tiny model: 4 run folders with the point's settings in
    their config.yaml and the sweep's W&B group; the same command again runs nothing."""
    import yaml

    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    args = ["train", "-m", *TINY, "method=lora", "method.r=2,4", "seed=0,1", "sweep.jobs=2", "sweep.name=real"]
    code, out, err = run_cli(capsys, *args)
    folder = tmp_path / "runs" / "sweeps" / "real"
    assert code == 0, err
    record = json.loads((folder / "sweep.json").read_text())
    assert [p["status"] for p in record["points"]] == ["done"] * 4
    for p in record["points"]:
        run = folder / p["run"]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["method"]["r"] == int(p["params"]["method.r"]) and cfg["seed"] == int(p["params"]["seed"])
        assert cfg["logger"]["group"] == "real" and cfg["trainer"]["threads"] >= 1
        assert (run / "metrics.jsonl").is_file() and p["metrics"]["steps"] == 1
    assert (folder / "train_loss.png").is_file() and "train_loss" in (folder / "summary.md").read_text()
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "4 finished earlier, skipped" in err
    assert [p["status"] for p in json.loads((folder / "sweep.json").read_text())["points"]] == ["skipped"] * 4


def test_submitit_slurm_off_a_cluster_is_one_line(fake, capsys, monkeypatch, tmp_path):
    """The real submitit_slurm path up to submission: off a cluster submitit finds no srun; one line, exit 2."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun/sbatch, whatever this machine has
    code, _, err = run_cli(capsys, "train", "-m", *TINY, "method=lora", "method.r=4,8",
                           "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "hydra/launcher=submitit_slurm" in lines[0] and "srun" in lines[0], err
    assert fake() == []


def test_a_non_ascii_path_sweeps_bare_and_a_path_list_stays_a_sweep():
    grid = expand(["data.path=/data/é x.jsonl", "seed=0,1"])
    assert grid.fixed == ["data.path=/data/é x.jsonl"] and len(grid.points) == 2
    assert expand(["data.path=/d/a.jsonl,/d/b.jsonl"]).swept == {"data.path": ["/d/a.jsonl", "/d/b.jsonl"]}
