"""Multi-process training with 2 gloo processes on a tiny random Llama.

- DDP over 2 ranks x grad_accum 1 gives the weights of 1 process with grad_accum 2, for full, lora and
  s2ft (S²FT's partial backprop and frozen graph under DDP's bucket hooks, without
  find_unused_parameters), and so does FSDP2 (gloo) for full and lora; pat (prune job), spt, dora and
  LoRA in bf16 autocast train under DDP (pat and spt with find_unused_parameters: without it DDP stops at their second step).
- 2-process checkpoints (DDP and FSDP2) resume in 2 processes and in 1 process with grad_accum 2 to
  the uninterrupted run's weights.
- Only rank 0 writes under the runs root (an audit hook in rank 1 records every mkdir/open-for-write/
  rename/remove there), and each run is one folder.
- A 2-process CLI run (`sparsetune train … trainer.nproc=2`) killed with SIGKILL resumes — in 2 processes
  from the CLI, and in 1 process with grad_accum 2 — to the weights of an uninterrupted run.

Tolerance: float32, rtol 1e-4 / atol 1e-5 on the trained weights after 3 Adam steps. Observed: DDP is
bit-identical (each rank's gradient is scaled by 2/units and the all-reduce average halves it again, both
exact), FSDP2's reduce-scatter differs by at most 6e-8 (`pytest -s` prints the figure per method).

This file is also the worker script the elastic launcher starts in each rank (`__main__` below).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TINY = ["model=tiny_llama", "data=synthetic_arith", "logger=quiet", "trainer.batch_size=2", "trainer.warmup_steps=1",
        "trainer.lr=1e-3", "trainer.threads=1", "eval=none", "trainer.save_every=2", "trainer.max_steps=3"]
# (name, job, extra overrides) run in one 2-process group, one after another
SCENARIOS = [
    ("full", "train", ["method=full"]),
    ("lora", "train", ["method=lora", "method.dropout=0.0"]),
    ("s2ft", "train", ["method=s2ft"]),
    ("fsdp_full", "train", ["method=full", "trainer.strategy=fsdp"]),
    ("fsdp_lora", "train", ["method=lora", "method.dropout=0.0", "trainer.strategy=fsdp"]),
    ("pat", "prune", ["method=pat", "method.rank=8", "method.r=4", "method.alpha=8", "method.dropout=0.0"]),
    ("spt", "train", ["method=spt"]),
    ("dora", "train", ["method=dora", "method.dropout=0.0"]),
    ("bf16", "train", ["method=lora", "trainer.precision=bf16"]),  # CPU bf16 autocast under DDP
]
# resumed in the same 2-process group from step 2 of these runs (a copy cut back to its step-2 checkpoint)
RESUMED = ("full", "fsdp_full")
RTOL, ATOL = 1e-4, 1e-5
ROOT = Path(__file__).resolve().parents[2]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ck = run / "checkpoints"
    return load_file(str(ck / (ck / "latest").read_text().strip() / "model.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    worst = 0.0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")
        worst = max(worst, float((a[name] - b[name]).abs().max()))
    return worst


def _launch(spec: dict, tmp: Path) -> None:
    """This file as the worker in 2 processes, through the launcher `trainer.nproc=2` uses."""
    from sparsetune.jobs.launch import elastic_run

    path = tmp / "spec.json"
    path.write_text(json.dumps(spec))
    elastic_run(2, [__file__, str(path)])


def _one_process(overrides: list[str], root: Path, job: str = "train") -> Path:
    from sparsetune.jobs import run_job
    from sparsetune.jobs.config import compose_job

    ov = [*overrides, f"run_dir={root}"]
    run_job(compose_job(ov), ov, job)
    (run,) = root.iterdir()
    return run


@pytest.fixture(scope="module")
def group_runs(tmp_path_factory):
    """Every scenario in one 2-process group (one start-up for all)."""
    tmp = tmp_path_factory.mktemp("ddp")
    spec = {"audit": str(tmp / "audit"), "runs": str(tmp / "runs"),
            "scenarios": [{"name": n, "job": j, "overrides": [*TINY, *ov, f"run_dir={tmp / 'runs' / n}"]}
                          for n, j, ov in SCENARIOS]
            + [{"name": f"{n}_resumed", "resume_of": n} for n in RESUMED]}
    _launch(spec, tmp)
    return tmp


@pytest.mark.parametrize("name", ["full", "lora", "s2ft", "fsdp_full", "fsdp_lora"])
def test_two_ranks_equal_one_process_with_twice_the_accumulation(group_runs, tmp_path, name):
    _, job, extra = next(s for s in SCENARIOS if s[0] == name)
    extra = [o for o in extra if not o.startswith("trainer.strategy")]
    (ddp_run,) = (group_runs / "runs" / name).iterdir()
    ref = _one_process([*TINY, *extra, "trainer.grad_accum=2"], tmp_path, job)
    worst = _assert_same(_weights(ddp_run), _weights(ref))
    print(f"{name}: max |w_2ranks - w_1process| = {worst:.1e}")  # -s shows it (docs/scale-out.md quotes it)
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    # the logged loss is the step's loss over both ranks: the one process's loss
    assert _losses(ddp_run) == pytest.approx(_losses(ref), rel=1e-5) and len(_losses(ref)) == 3


def _losses(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.parametrize("name", ["pat", "spt", "dora", "bf16"])
def test_other_methods_train_under_ddp(group_runs, name):
    (run,) = (group_runs / "runs" / name).iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert all(torch.isfinite(t).all() for t in _weights(run).values())


def _cut_back_to_step_2(run: Path, to: Path) -> Path:
    """A copy of `run` as if it had been killed after its step-2 checkpoint."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / "step-0000003")
    (to / "checkpoints" / "latest").write_text("step-0000002\n")
    (to / "summary.json").unlink()
    return to


@pytest.mark.parametrize("name", RESUMED)
def test_multi_process_checkpoints_resume_in_two_processes_and_in_one(group_runs, tmp_path, name):
    """Full state in the checkpoint: 2 ranks (DDP or FSDP) resume to the uninterrupted weights, and so
    does 1 process with grad_accum 2 (FSDP's optimiser state loads into an unsharded model)."""
    from sparsetune.jobs import run_job
    from sparsetune.jobs.resume import resume_config

    (whole,) = (group_runs / "runs" / name).iterdir()
    (resumed,) = (group_runs / "runs" / f"{name}_resumed").iterdir()
    _assert_same(_weights(resumed), _weights(whole))
    assert _losses(resumed) == pytest.approx(_losses(whole), rel=1e-5)
    one = _cut_back_to_step_2(whole, tmp_path / "one")
    args = [f"resume={one}", "trainer.nproc=1", "trainer.grad_accum=2"]
    run_job(resume_config(str(one), args), args)
    _assert_same(_weights(one), _weights(whole))


def test_only_rank_zero_writes(group_runs):
    audit = json.loads((group_runs / "audit" / "rank1.json").read_text())
    assert audit["events"] == [], audit["events"][:5]
    assert audit["runs_seen"] == len(SCENARIOS) + len(RESUMED)  # rank 1 did run every scenario
    for name, *_ in SCENARIOS:
        assert len(list((group_runs / "runs" / name).iterdir())) == 1  # one run folder, from rank 0


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sparsetune.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


@pytest.mark.slow  # three CLI start-ups (parent + 2 ranks, twice): ~1.5 min on 2 shared cores
def test_killed_two_process_cli_run_resumes_to_the_uninterrupted_weights(tmp_path):
    steps = ["trainer.max_steps=30", "trainer.save_every=2", "method=full"]
    root = tmp_path / "runs"
    proc = _cli("train", *TINY, *steps, "trainer.nproc=2", f"run_dir={root}")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(root.glob("*/checkpoints/step-0000004")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    import psutil

    # SIGKILL mid-run: both ranks (the launcher starts each in its own session), then the CLI parent
    family = psutil.Process(proc.pid).children(recursive=True)
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.kill()
    proc.wait()
    (run,) = root.iterdir()
    assert not (run / "summary.json").exists()
    killed_at = int((run / "checkpoints" / "latest").read_text().strip()[5:])
    assert 4 <= killed_at < 30
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)

    # 2 processes again, from the CLI (trainer.nproc=2 works end to end)
    out = _cli("train", f"resume={run}")
    log = out.communicate(timeout=600)[0]
    assert out.returncode == 0, log[-3000:]
    # 1 process with grad_accum 2: the same micro-batches per step
    from sparsetune.jobs import run_job
    from sparsetune.jobs.resume import resume_config

    args = [f"resume={copy}", "trainer.nproc=1", "trainer.grad_accum=2"]
    run_job(resume_config(str(copy), args), args)

    ref = _one_process([*TINY, *steps, "trainer.grad_accum=2"], tmp_path / "ref")
    _assert_same(_weights(run), _weights(ref))
    _assert_same(_weights(copy), _weights(ref))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 31))  # each step logged once
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2


def test_resume_refuses_another_micro_batch_count(tmp_path):
    from sparsetune.errors import UserError
    from sparsetune.jobs.resume import check_world, resume_config

    run = _one_process([*TINY, "method=full"], tmp_path)
    from sparsetune.engine.checkpoint import find_resumable

    _, ckpt = find_resumable(run / "checkpoints")
    assert ckpt["world_size"] == 1 and ckpt["grad_accum"] == 1
    with pytest.raises(UserError, match="1 process\\(es\\) x trainer.grad_accum=1"):
        check_world(ckpt, resume_config(str(run), [f"resume={run}", "trainer.nproc=2"]))
    check_world(ckpt, resume_config(str(run), [f"resume={run}", "trainer.max_steps=5"]))


@pytest.mark.parametrize("overrides,message", [
    (["trainer.nproc=0"], "trainer.nproc: 0 is not valid"),
    (["trainer.strategy=zero3"], "trainer.strategy: 'zero3' is not valid; valid: ddp, fsdp"),
    (["trainer.device=cpu", "trainer.precision=fp16"], "fp16 needs a CUDA device"),
    (["method=s2ft", "trainer.strategy=fsdp"], "use trainer.strategy=ddp for s2ft"),
    (["trainer.strategy=fsdp", "trainer.eval_every=5"], "set trainer.eval_every=0"),
])
def test_bad_distributed_settings_fail_in_one_line_before_anything_starts(tmp_path, overrides, message):
    from sparsetune.errors import UserError
    from sparsetune.jobs import run_job
    from sparsetune.jobs.config import compose_job

    ov = [*TINY, *overrides, "trainer.nproc=2" if "trainer.nproc=0" not in overrides else "seed=0",
          f"run_dir={tmp_path}"]
    with pytest.raises(UserError, match=re.escape(message)) as err:
        run_job(compose_job(ov), ov)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # no process was started, no run folder made


# --- the worker: runs in every rank --------------------------------------------------------------------
def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared audit hook
    from write_audit import record_writes_under

    events = record_writes_under(spec["runs"]) if rank != 0 else []
    from sparsetune.engine import distributed
    from sparsetune.jobs import run_job
    from sparsetune.jobs.config import compose_job

    # one process group for all scenarios: a group cannot be re-made on the launcher's store once torn down
    teardown, distributed.teardown = distributed.teardown, lambda: None
    seen = 0
    for scenario in spec["scenarios"]:
        if "resume_of" in scenario:
            import torch.distributed

            (whole,) = (Path(spec["runs"]) / scenario["resume_of"]).iterdir()
            copy = Path(spec["runs"]) / scenario["name"] / whole.name
            if rank == 0:
                _cut_back_to_step_2(whole, copy)
            torch.distributed.barrier()
            args = [f"resume={copy}"]
            from sparsetune.jobs.resume import resume_config

            run_job(resume_config(str(copy), args), args)
        else:
            overrides = scenario["overrides"]
            run_job(compose_job(overrides), overrides, scenario["job"])
        seen += 1
    teardown()
    if rank != 0:
        audit_dir = Path(spec["audit"])
        audit_dir.mkdir(parents=True, exist_ok=True)
        (audit_dir / f"rank{rank}.json").write_text(json.dumps({"events": events, "runs_seen": seen}))


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    _worker(sys.argv[1])
