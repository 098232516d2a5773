"""Assemble a job's live objects: data → model → method (with its context) → run folder.

Everything that can fail on bad input happens before the run folder exists, so a failed start leaves
no half-made run behind and never touches an existing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsetune.config.checks import check_environment, check_precision
from sparsetune.data import Splits, build_train_dataset, load_splits
from sparsetune.engine import distributed as dist
from sparsetune.engine.grad_checkpoint import enable_gradient_checkpointing
from sparsetune.engine.lean_mlp import make_mlps_lean
from sparsetune.engine.offline import configure_network
from sparsetune.engine.progress import console
from sparsetune.engine.run_folder import RunFolder
from sparsetune.engine.runtime import apply_threads, quiet_libraries, resolve_device, seed_everything
from sparsetune.errors import ConfigError
from sparsetune.eval.suite import check_eval_tasks
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.models import get_arch, load_model
from sparsetune.paths import runs_root


@dataclass
class Job:
    """Live objects of a run, for the commands that train and evaluate (train, prune, forget, eval)."""

    cfg: Any
    run: RunFolder | None
    model: torch.nn.Module
    tokenizer: Any
    method: Any
    ctx: MethodContext
    splits: Any
    device: str
    dataset: Any = None
    collate: Any = None


def check_run_environment(cfg) -> None:
    """The runs root exists or can be created, is a writable directory with some free space: one
    ConfigError line otherwise. Call before `RunFolder.create`."""
    check_environment(runs_root(cfg.run_dir))


def setup(cfg, overrides: list[str], job: str = "train", method_state: dict | None = None,
          create_run: bool = True, load_data: bool = True) -> Job:
    """Load data and model, apply the method, then create (or reopen, on resume) the run folder.

    A model the job layer builds itself (the ViT base) must exist already: callers run
    `jobs.vision_base.ensure_vision_base` first.

    `method_state` (from a checkpoint) is loaded before `apply`, so a resumed method rebuilds exactly
    the same structure (selected indices, masks) before its tensors are restored.

    In a process group (torchrun, `trainer.nproc=N`) every rank builds the same model from the same
    seed on its own device; only rank 0 creates (or reopens) the run folder, and the others get its
    path from rank 0.

    `load_data=False` (an eval that asks only for lm-eval tasks) skips the data set entirely: the
    job's splits are then empty and methods get no calibration batches.
    """
    configure_network(cfg)  # first: local runs never reach the network (Hub, datasets, W&B telemetry)
    quiet_libraries()
    apply_threads(cfg.trainer.threads)
    seed_everything(cfg.seed)
    if create_run and not cfg.resume:
        check_run_environment(cfg)  # runs root usable before any data or model is loaded
    device = dist.init(resolve_device(cfg.trainer.device))  # joins the launcher's group, if any
    check_precision(cfg.trainer.precision, device)
    splits = load_splits(cfg.data) if load_data else Splits(kind=cfg.data.kind, train=[], val=[], test=[])
    model, tokenizer = load_model(cfg.model)
    method = build_method(cfg.method)
    if method_state is not None:
        method.load_state_dict(method_state)
    dataset, collate = build_train_dataset(splits, tokenizer, cfg.data) if load_data else ([], None)
    bs = cfg.trainer.batch_size
    if job in ("train", "prune") and len(dataset) < bs:
        raise ConfigError(f"trainer.batch_size={bs} is larger than the {len(dataset)} training examples of "
                          f"{cfg.data.name}; lower trainer.batch_size or raise data.train_size")

    def calibration_batches(n: int) -> list[dict]:
        return [collate([dataset[i] for i in range(b * bs, min(len(dataset), (b + 1) * bs))]) for b in range(n)]

    ctx = MethodContext(arch=get_arch(model), tokenizer=tokenizer,
                        calibration_batches=calibration_batches if load_data else None,
                        device=device, precision=cfg.trainer.precision)
    model = method.apply(model, ctx).to(device)
    if cfg.trainer.lean_mlp:
        make_mlps_lean(model)
    if cfg.trainer.gradient_checkpointing:  # blocks named by the arch from before the method wrapped them
        enable_gradient_checkpointing(model, ctx.arch)
    assembled = Job(cfg, None, model, tokenizer, method, ctx, splits, device, dataset, collate)
    if create_run:
        open_run(assembled, overrides, job, check_environment=False)  # checked above, before loading
    return assembled


def open_run(job: Job, overrides: list[str], name: str, check_environment: bool = True) -> RunFolder:
    """Create the run folder (or reopen `cfg.resume`'s) once every input check has passed, and hand
    it to the job and the method's context. A job with checks of its own after `setup` (forget's
    task sequence) calls `setup(create_run=False)`, checks, then this. In a process group rank 0
    creates it and the others get its path."""
    cfg = job.cfg
    if check_environment and not cfg.resume:
        check_run_environment(cfg)
    check_eval_tasks(cfg)  # unknown or unreachable lm-eval tasks fail now, not after training
    run = None
    if dist.is_main():
        run = RunFolder.open(cfg.resume) if cfg.resume else RunFolder.create(cfg, overrides, name)
    run = RunFolder(Path(dist.broadcast_object(str(run.path) if dist.is_main() else None)))
    job.run, job.ctx.run_dir = run, run.path
    if dist.is_main():
        console.print(f"[bold]run folder:[/bold] {run.path}")
    return run
