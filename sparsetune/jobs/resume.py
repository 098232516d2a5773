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
the run's config.yaml (only those keys change: nothing is filled in) and appended to overrides.txt once
the checkpoint has been loaded.

A key the stored config lacks (an older version wrote it, or a hand edit) is refused when it shapes
training (model.*, data.*, method.*, trainer.* outside the list above, seed, forget.*): today's
default could make the rest of the run another run. Giving it on the command line (the value the run
was trained with) is accepted. Any other missing key takes today's default, with one line saying so.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import OmegaConf

from sparsetune.config.stored import origin, show
from sparsetune.engine.checkpoint import find_resumable
from sparsetune.engine.distributed import env_world, launched
from sparsetune.engine.progress import console
from sparsetune.engine.run_folder import RunFolder, atomic_write_text
from sparsetune.errors import UserError
from sparsetune.jobs.config import read_stored_config, validate_job

RESUME_KEYS = ("trainer.max_steps", "trainer.eval_every", "trainer.save_every", "trainer.log_every",
               "trainer.device", "trainer.threads", "trainer.nproc", "trainer.grad_accum")
RESUME_PREFIXES = ("logger.", "eval.")
ACCEPTED = ", ".join([*RESUME_KEYS, *(p + "*" for p in RESUME_PREFIXES)])
# keys a stored config may lack besides those: they never reach training (bookkeeping, sweeps, benchmarks)
FILLABLE_PREFIXES = ("sweep.", "bench.")
FILLABLE_KEYS = ("description", "recipe", "run_dir", "run", "resume", "cache_as")


def _key(override: str) -> str:
    return override.lstrip("+").split("=", 1)[0].strip()


def _cannot_change_the_run(key: str) -> bool:
    return key in RESUME_KEYS or key.startswith(RESUME_PREFIXES)


def _fillable(key: str) -> bool:
    """A key a stored config may lack on resume, filled with today's default (and said so): one that
    cannot change the run so far, or that never reaches training (bookkeeping, sweeps, benchmarks)."""
    return _cannot_change_the_run(key) or key.startswith(FILLABLE_PREFIXES) or key in FILLABLE_KEYS


def resume_overrides(overrides: list[str], missing: list[str] = ()) -> list[str]:
    """The overrides given next to `resume=` (which is dropped), checked against the allow-list; a key the
    stored config lacks (`missing`) may be given too: the value the run was trained with."""
    rest = [o for o in overrides if not o.startswith("resume=")]
    bad = [o for o in rest if "=" not in o or o.startswith("~")
           or not (_cannot_change_the_run(_key(o)) or _key(o) in missing)]
    if bad:
        raise UserError(f"resume=… accepts only overrides that cannot change the run so far ({ACCEPTED}); "
                        f"got: {' '.join(bad)}")
    return rest


def resume_config(run_dir: str, overrides: list[str]):
    """The run's stored config with the accepted overrides applied, and `resume` set to the run.

    A key the stored config.yaml lacks (another version wrote it, or a hand edit) is refused when it
    shapes training — today's default could make the rest of the run another run — unless the command
    line gives its value; any other missing key takes today's default with one line naming it."""
    run = RunFolder.open(run_dir)
    stored = read_stored_config(run)
    cfg = validate_job(stored.raw)
    rest = resume_overrides(overrides, stored.missing)
    given = {_key(o) for o in rest}
    unknown = [k for k in stored.missing if not _fillable(k) and k not in given]
    if unknown:
        values = " ".join(f"{k}={show(OmegaConf.select(cfg, k))}" for k in unknown)
        command = run.resume_command() or f"sparsetune train resume={run.path}"
        raise UserError(f"{run.config_path} has no {', '.join(unknown)} ({origin(stored.version)}); today's "
                        f"default could change what this run trains, so give the value it was trained with, "
                        f"e.g. {command} {values} if that was today's default")
    if rest:
        if cfg.trainer.epochs and "trainer.max_steps" in given:
            raise UserError(f"this run counts epochs (trainer.epochs={cfg.trainer.epochs}), so trainer.max_steps "
                            "cannot extend it on resume")
        merged = OmegaConf.merge(OmegaConf.to_container(cfg),
                                 OmegaConf.from_dotlist([o.lstrip("+") for o in rest]))
        cfg = validate_job(merged)
    for key in stored.missing:
        if key not in given:
            print(stored.fill_line(key, cfg), file=sys.stderr)
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
    """After a successful restore: store the accepted overrides in config.yaml and overrides.txt.

    config.yaml gets exactly those keys changed: what the run was trained with stays as it was stored
    (its version line, its key names; a key it lacks is not filled with today's default)."""
    rest = [o for o in overrides if not o.startswith("resume=")]
    if not rest:
        return
    stored = OmegaConf.merge(run.load_raw_config(), OmegaConf.from_dotlist([o.lstrip("+") for o in rest]))
    atomic_write_text(run.config_path, OmegaConf.to_yaml(stored))
    old = (run.path / "overrides.txt").read_text() if (run.path / "overrides.txt").exists() else ""
    atomic_write_text(run.path / "overrides.txt", old + " ".join(["resume", *rest]) + "\n")
