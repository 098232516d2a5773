"""`trainer.nproc=N`: re-launch the job in N processes through torchrun's elastic launcher.

The parent composes and checks the config (bad input fails here, once, before any process starts),
then starts `python -m sparsetune.cli <job> <same overrides>` N times with a standalone c10d
rendezvous on this host — what `torchrun --standalone --nproc-per-node N` does. Each child runs the
normal job and finds its rank in the environment (engine/distributed.py); rank 0 tells the parent
which run folder it wrote, and the parent returns that run's summary.json.

Under torchrun or `accelerate launch` (WORLD_SIZE already set) nothing is re-launched: the launcher's
world size wins over `trainer.nproc`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sparsetune.engine.distributed import env_world, launched
from sparsetune.errors import ConfigError, UserError
from sparsetune.methods import REGISTRY, method_class

# the file through which rank 0 tells the parent its run folder
RESULT_ENV = "SPARSETUNE_LAUNCH_RESULT"


class LaunchError(UserError):
    """A child process of `trainer.nproc=N` failed (its own message is printed above)."""


def check_distributed(cfg, job: str) -> None:
    """Strategy/method/job combinations multi-process training does not cover, as one line each."""
    t = cfg.trainer
    world = env_world().size if os.environ.get("WORLD_SIZE") else int(t.nproc)
    if t.strategy not in method_class(cfg.method.name).strategies:  # a fact of the method (Method.strategies)
        able = [n for n in REGISTRY if t.strategy in method_class(n).strategies]
        raise ConfigError(f"trainer.strategy={t.strategy} supports methods {', '.join(able)}; "
                          f"use trainer.strategy=ddp for {cfg.method.name}")
    if t.strategy == "fsdp" and t.eval_every:
        raise ConfigError("trainer.strategy=fsdp evaluates only at the end (the sharded model is gathered "
                          "then); set trainer.eval_every=0")
    if world > 1 and job == "forget" and t.strategy == "fsdp":
        raise ConfigError("the forget job trains under DDP (a fresh adapter per task); use trainer.strategy=ddp")


def needs_spawn(cfg) -> bool:
    return int(cfg.trainer.nproc) > 1 and not launched()


def spawn(cfg, overrides: list[str], job: str) -> dict[str, Any]:
    """Run `job` in `trainer.nproc` processes; return the summary rank 0 wrote."""
    with tempfile.TemporaryDirectory(prefix="sparsetune-launch-") as tmp:
        result = Path(tmp) / "run.json"
        elastic_run(int(cfg.trainer.nproc), ["-m", "sparsetune.cli", job, *overrides], {RESULT_ENV: str(result)})
        run = Path(json.loads(result.read_text())["run"]) if result.is_file() else None
    if run is None or not (run / "summary.json").is_file():
        raise LaunchError("the processes finished but rank 0 left no summary.json")
    return json.loads((run / "summary.json").read_text())


def elastic_run(nproc: int, args: list[str], env: dict[str, str] | None = None) -> None:
    """`python ARGS` in `nproc` processes on this host through torchrun's elastic launcher with a
    standalone c10d rendezvous (`torchrun --standalone --nproc-per-node N`), no restarts. One line
    (LaunchError) when a process fails; its own message is above."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"sparsetune-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    env = {**_child_env(nproc), **(env or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the launcher hands its own environment to the children
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the agent's chatter (rendezvous, SIGTERM, "failed"): LaunchError says it
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise LaunchError(f"{len(exc.failures)} of {nproc} processes failed (first: rank {rank}, exit code "
                          f"{failure.exitcode}); their messages are above") from None
    finally:
        quiet.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _child_env(nproc: int) -> dict[str, str]:
    """What the children need beyond our environment: the package on the path, and (as torchrun does)
    a share of the CPU threads each unless the user set OMP_NUM_THREADS."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": root + (os.pathsep + path if path else "")}
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


def report_run(run_dir: Path) -> None:
    """In rank 0 of a re-launched job: tell the parent which run folder this is."""
    target = os.environ.get(RESULT_ENV)
    if target:
        Path(target).write_text(json.dumps({"run": str(run_dir)}) + "\n")
