"""`sparsetune train resume=DIR [overrides]`: the stored config, a documented allow-list of overrides,
and the checkpoint to continue from — or a one-line error. Resuming never silently restarts at step 0.

Overrides accepted with `resume=` are those that cannot change the run's results up to the checkpoint:

- `trainer.max_steps` — extend (or shorten, down to the checkpoint's step) the run. The lr schedule is
  rebuilt for the new total: from the checkpoint on, the lr is what warm-up/decay computed for the new
  `trainer.max_steps` gives at that step (for linear/cosine decay it therefore jumps up at the resume
  point, since the same step is earlier in a longer schedule). Not accepted for epoch-based runs.
- `trainer.eval_every`, `trainer.save_every`, `trainer.log_every`, `trainer.device`, `trainer.threads`
- `trainer.nproc` and `trainer.grad_accum` (or torchrun's process count), as long as processes ×
  grad_accum stays what the checkpoint was trained with: then every optimiser step sees the same
  micro-batches (engine/loop.py), so a 2-process run may continue in 1 process with twice the
  accumulation, or the other way round. Checkpoints hold full, unsharded state, so any count works.
- `logger.*`, `eval.*`

Anything else is refused with one line that lists the accepted keys. Accepted overrides are written to
the run's config.yaml and appended to overrides.txt once the checkpoint has been loaded.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from sparsetune.engine.checkpoint import find_resumable
from sparsetune.engine.distributed import env_world, launched
from sparsetune.engine.progress import console
from sparsetune.engine.run_folder import RunFolder, atomic_write_text
from sparsetune.errors import UserError
from sparsetune.jobs.config import load_run_config, validate_job

RESUME_KEYS = ("trainer.max_steps", "trainer.eval_every", "trainer.save_every", "trainer.log_every",
               "trainer.device", "trainer.threads", "trainer.nproc", "trainer.grad_accum")
RESUME_PREFIXES = ("logger.", "eval.")
ACCEPTED = ", ".join([*RESUME_KEYS, *(p + "*" for p in RESUME_PREFIXES)])


def _key(override: str) -> str:
    return override.lstrip("+").split("=", 1)[0].strip()


def resume_overrides(overrides: list[str]) -> list[str]:
    """The overrides given next to `resume=` (which is dropped), checked against the allow-list."""
    rest = [o for o in overrides if not o.startswith("resume=")]
    bad = [o for o in rest
           if "=" not in o or o.startswith("~") or not (_key(o) in RESUME_KEYS or _key(o).startswith(RESUME_PREFIXES))]
    if bad:
        raise UserError(f"resume=… accepts only overrides that cannot change the run so far ({ACCEPTED}); "
                        f"got: {' '.join(bad)}")
    return rest


def resume_config(run_dir: str, overrides: list[str]):
    """The run's stored config with the accepted overrides applied, and `resume` set to the run."""
    run = RunFolder.open(run_dir)
    cfg = load_run_config(run)
    rest = resume_overrides(overrides)
    if rest:
        if cfg.trainer.epochs and any(_key(o) == "trainer.max_steps" for o in rest):
            raise UserError(f"this run counts epochs (trainer.epochs={cfg.trainer.epochs}), so trainer.max_steps "
                            "cannot extend it on resume")
        merged = OmegaConf.merge(OmegaConf.to_container(cfg),
                                 OmegaConf.from_dotlist([o.lstrip("+") for o in rest]))
        cfg = validate_job(merged)
    cfg.resume = str(run.path)
    return cfg


def load_resume_checkpoint(cfg) -> dict[str, Any]:
    """The newest good checkpoint of `cfg.resume` (verified; a damaged latest falls back to the previous
    good one with a warning); a one-line UserError when there is none. Reads only, writes nothing.
    Rank 0 first claims the folder (its lock: one writer per run folder; and free space), so a second
    writer is refused before it loads anything."""
    run = RunFolder.open(cfg.resume)
    if env_world().rank == 0:
        run.claim_for_resume()
    _, ckpt = find_resumable(run.checkpoints,
                             warn=lambda msg: console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False,
                                                          soft_wrap=True))
    return ckpt


def check_world(ckpt: dict[str, Any], cfg) -> None:
    """Processes × grad_accum must match the checkpoint's (the micro-batches of each step); one line if not."""
    world = env_world().size if launched() else int(cfg.trainer.nproc)
    old_world, old_accum = int(ckpt.get("world_size") or 1), int(ckpt.get("grad_accum") or cfg.trainer.grad_accum)
    if world * int(cfg.trainer.grad_accum) != old_world * old_accum:
        raise UserError(f"this run was trained with {old_world} process(es) x trainer.grad_accum={old_accum} = "
                        f"{old_world * old_accum} micro-batches per step; resume with processes x grad_accum equal "
                        f"to that (now {world} x {cfg.trainer.grad_accum}), e.g. trainer.nproc={old_world} "
                        f"trainer.grad_accum={old_accum}")


def record_resume(run: RunFolder, cfg, overrides: list[str]) -> None:
    """After a successful restore: store the accepted overrides in config.yaml and overrides.txt."""
    rest = [o for o in overrides if not o.startswith("resume=")]
    if not rest:
        return
    stored = cfg.copy()
    stored.resume = None
    atomic_write_text(run.config_path, OmegaConf.to_yaml(stored))
    old = (run.path / "overrides.txt").read_text() if (run.path / "overrides.txt").exists() else ""
    atomic_write_text(run.path / "overrides.txt", old + " ".join(["resume", *rest]) + "\n")
