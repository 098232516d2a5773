"""Jobs: assemble the engine and a method for one command (train, prune, forget, eval, export, sweeps)
and write the run folder; benchmarks live beside them in `sparsetune.bench`. The CLI calls `run_job`;
nothing below this layer imports it."""

from __future__ import annotations

from typing import Any

from sparsetune.errors import ConfigError

JOBS = ("train", "prune", "forget")


def run_job(cfg, overrides: list[str], job: str = "train") -> dict[str, Any]:
    """Check that the method serves `job`, then run it."""
    from sparsetune.methods import REGISTRY, method_class

    if job not in method_class(cfg.method.name).jobs:
        serving = sorted(n for n in REGISTRY if job in method_class(n).jobs)
        raise ConfigError(f"method '{cfg.method.name}' does not support `{job}`; methods that do: "
                          f"{', '.join(serving) or 'none yet'}")
    from sparsetune.engine.offline import configure_network
    from sparsetune.jobs.launch import check_distributed, needs_spawn, spawn
    from sparsetune.jobs.vision_base import ensure_vision_base

    check_distributed(cfg, job)
    configure_network(cfg)  # before anything loads: building the ViT base must stay offline too
    ensure_vision_base(cfg.model)  # once, in the parent, before trainer.nproc=N processes start
    if needs_spawn(cfg):
        return spawn(cfg, overrides, job)
    from sparsetune.engine.distributed import teardown
    from sparsetune.engine.run_folder import held_run_folders, release_run_folders

    held = held_run_folders()
    try:
        if job == "forget":
            from sparsetune.jobs.forget import run_forget

            return run_forget(cfg, overrides, job)
        from sparsetune.jobs.train import run_train

        return run_train(cfg, overrides, job)
    finally:
        teardown()  # leave the process group (torchrun / accelerate / trainer.nproc children)
        release_run_folders(keep=held)  # the job's run folder lock (a CLI process ends here anyway)
