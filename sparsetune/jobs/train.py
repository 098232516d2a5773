"""The `train` and `prune` jobs: set up, run the engine's loop, evaluate on the held-out split,
export, write summary.json — in one process or in every rank of a process group, where the loss
module is wrapped in DDP (or sharded with FSDP2) and rank 0 alone logs, checkpoints, evaluates and
exports."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import OmegaConf

from sparsetune.engine import distributed as dist
from sparsetune.engine import losses
from sparsetune.engine.checkpoint import latest_checkpoint, load_checkpoint
from sparsetune.engine.logging import MultiLogger, WandbLogger, build_logger, log_method_tables
from sparsetune.engine.loop import summarise
from sparsetune.engine.measure import count_parameters, peak_memory_mb
from sparsetune.engine.progress import console, training_progress
from sparsetune.engine.run_folder import check_present
from sparsetune.eval.suite import evaluate_model
from sparsetune.jobs.assemble import Job, setup
from sparsetune.jobs.common import eval_log, print_summary, publish, show_method_output
from sparsetune.jobs.launch import report_run
from sparsetune.jobs.resume import check_world, load_resume_checkpoint, record_resume
from sparsetune.jobs.train_task import train_task


def total_steps(tcfg, n_examples: int, world: int = 1) -> int:
    """Optimiser steps of the run; an epoch is shared by `world` ranks."""
    if tcfg.epochs:
        per_epoch = max(1, n_examples // tcfg.batch_size)
        return max(1, math.ceil(tcfg.epochs * per_epoch / (tcfg.grad_accum * world)))
    return tcfg.max_steps


def run_train(cfg, overrides: list[str], job: str = "train") -> dict[str, Any]:
    """`sparsetune train` / `prune`: a new run, or the continuation of `cfg.resume`.

    On resume the checkpoint is verified and loaded first (a missing or damaged one is a one-line
    UserError, never a silent restart), and the run folder is only written to once it is restored."""
    ckpt, on_restored = None, None
    if cfg.resume:
        ckpt = load_resume_checkpoint(cfg)  # every rank reads it (read-only)
        check_world(ckpt, cfg)

        def on_restored():
            if dist.is_main():
                record_resume(assembled.run, cfg, overrides)
    assembled = setup(cfg, overrides, job, method_state=ckpt["method"] if ckpt else None)
    summary = train(assembled, ckpt=ckpt, on_restored=on_restored, overrides=overrides)
    if dist.is_main() and dist.world_size() > 1:
        report_run(assembled.run.path)
    return summary


def _gathered_job(job: Job, overrides: list[str]) -> Job:
    """FSDP, rank 0, after training: the same method on a fresh unsharded model with the final
    checkpoint's full tensors (exactly what a resume would rebuild), for eval, export and counts."""
    ckpt = load_checkpoint(latest_checkpoint(job.run.checkpoints))
    fresh = setup(job.cfg, overrides, "train", method_state=ckpt["method"], create_run=False)
    params = dict(fresh.model.named_parameters())
    with torch.no_grad():
        for name, value in ckpt["model"].items():
            params[name].copy_(value)
    fresh.run, fresh.ctx.run_dir = job.run, job.run.path
    return fresh


def train(job: Job, ckpt: dict | None = None, on_restored=None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the loop to the end, evaluate on the held-out split, export, write summary.json.

    In a process group every rank runs the loop; rank 0 alone logs, writes checkpoints, evaluates and
    exports, and the others return an empty dict once training is done."""
    cfg, run = job.cfg, job.run
    tcfg = cfg.trainer
    main, world = dist.is_main(), dist.world_size()
    wb = None

    def evaluate_val(model):
        if not main:  # rank 0 evaluates its (identical, DDP) replica; the others wait at the loop's barrier
            return {}
        return evaluate_model(cfg, job.method.prepare_for_eval(model), job.tokenizer, job.splits, "val", run.path)

    def open_logger():  # ranks > 0 log nothing
        nonlocal wb
        if not main:
            return MultiLogger([])
        logger = build_logger(cfg.logger, run.path, OmegaConf.to_container(cfg, resolve=True), run.path.name,
                              resume_step=ckpt["loop"]["step"] if ckpt else None,
                              wandb_id=(ckpt or {}).get("wandb_id"))
        wb = logger.find(WandbLogger)
        if ckpt:
            console.print(f"resuming from step {ckpt['loop']['step']}")
        return logger

    task = train_task(job, dataset=job.dataset, collate=job.collate, tcfg=tcfg,
                      steps=total_steps(tcfg, len(job.dataset), world), seed=cfg.seed,
                      loss_fn=losses.task_loss(cfg.model.task), checkpoint_dir=run.checkpoints,
                      open_logger=open_logger, evaluate=evaluate_val if len(job.splits.val or []) else None,
                      progress=training_progress() if main else None, ckpt=ckpt,
                      on_restored=on_restored,
                      extra_state=lambda: {"wandb_id": wb.run_id if wb else None})
    state, logger, train_time = task.state, task.logger, task.seconds
    train_peak = peak_memory_mb(job.device)  # before the held-out eval: scoring batches are not training memory
    if not main:
        return {}
    if task.loop.sharded:
        job = _gathered_job(job, overrides or [])
    eval_model = job.method.prepare_for_eval(job.model)
    results = evaluate_model(cfg, eval_model, job.tokenizer, job.splits, "test", run.path) if cfg.eval.enabled else {}
    check_present(run.path)  # deleted during the held-out eval: stop before export/ could be recreated
    job.method.export(job.model, run.export)
    if cfg.cache_as:
        publish(run.export, cfg.cache_as)
    trainable, total = count_parameters(job.model)
    summary = {
        "status": "finished",
        "recipe": cfg.recipe,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "device": job.device,
        "trainable_params": trainable,
        "total_params": total,
        **summarise(state),
        "peak_memory_mb": train_peak,
        "process_peak_memory_mb": peak_memory_mb(job.device),  # training, held-out eval and export together
        "wall_time_s": train_time,
        **({"world_size": world, "strategy": tcfg.strategy} if world > 1 else {}),
        "eval": results,
        **job.method.metrics(),
    }
    run.write_summary(summary)
    logger.log(eval_log(results), state.step)
    log_method_tables(logger, job.method.tables(), state.step)  # e.g. PAT's baseline comparison, as W&B tables
    logger.summary(summary)
    logger.close()
    show_method_output(job.method)
    print_summary(summary, run)
    return summary
