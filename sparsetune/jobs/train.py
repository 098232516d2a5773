"""The `train` and `prune` jobs: set up, run the engine's loop, evaluate on the held-out split,
export, write summary.json — in one process or in every rank of a process group, where the loss
module is wrapped in DDP (or sharded with FSDP2) and rank 0 alone logs, checkpoints, evaluates and
exports."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from sparsetune.engine import distributed as dist
from sparsetune.engine import losses
from sparsetune.engine.logging import MultiLogger, WandbLogger, build_logger, log_method_tables
from sparsetune.engine.loop import BatchStream, LoopState, LossStep, TrainLoop, summarise
from sparsetune.engine.measure import count_parameters, peak_memory_mb
from sparsetune.engine.optim import build_optimizer, build_scheduler
from sparsetune.engine.progress import console, training_progress
from sparsetune.errors import UserError
from sparsetune.eval.suite import evaluate_model
from sparsetune.jobs.assemble import Job, setup
from sparsetune.jobs.common import eval_log, print_summary, publish, show_method_output


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
        from sparsetune.jobs.resume import check_world, load_resume_checkpoint, record_resume

        ckpt = load_resume_checkpoint(cfg)  # every rank reads it (read-only)
        check_world(ckpt, cfg)

        def on_restored(job):
            if dist.is_main():
                record_resume(job.run, cfg, overrides)
    assembled = setup(cfg, overrides, job, method_state=ckpt["method"] if ckpt else None)
    summary = train(assembled, ckpt=ckpt, on_restored=on_restored, overrides=overrides)
    if dist.is_main() and dist.world_size() > 1:
        from sparsetune.jobs.launch import report_run

        report_run(assembled.run.path)
    return summary


def _step_module(job: Job, loss_fn):
    """The loss module the loop calls: plain in one process; DDP-wrapped or FSDP2-sharded in a group.
    FSDP shards before the optimiser exists (it replaces parameters with sharded ones)."""
    module = LossStep(job.model, loss_fn, job.method)
    if not dist.active():
        return module
    if job.cfg.trainer.strategy == "fsdp":
        return dist.shard_fsdp(module, [b.module for b in job.ctx.arch.blocks])
    return dist.wrap_ddp(module, job.device, find_unused=job.method.ddp_find_unused)


def _gathered_job(job: Job, overrides: list[str]) -> Job:
    """FSDP, rank 0, after training: the same method on a fresh unsharded model with the final
    checkpoint's full tensors (exactly what a resume would rebuild), for eval, export and counts."""
    import torch

    from sparsetune.engine.checkpoint import latest_checkpoint, load_checkpoint
    from sparsetune.jobs.assemble import setup as build

    ckpt = load_checkpoint(latest_checkpoint(job.run.checkpoints))
    fresh = build(job.cfg, overrides, "train", method_state=ckpt["method"], create_run=False)
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
    from omegaconf import OmegaConf

    cfg, run = job.cfg, job.run
    tcfg = cfg.trainer
    main, world = dist.is_main(), dist.world_size()
    loss_fn = losses.task_loss(cfg.model.task)
    step_module = _step_module(job, loss_fn)
    steps = total_steps(tcfg, len(job.dataset), world)
    optimizer = build_optimizer(job.method, job.model, tcfg)
    job.ctx.optimizer = optimizer
    scheduler = build_scheduler(optimizer, tcfg, steps)
    if ckpt and int(ckpt["loop"]["step"]) > steps:
        raise UserError(f"trainer.max_steps={steps} is below the checkpoint's step {ckpt['loop']['step']}; "
                        "resume with trainer.max_steps of at least that")
    state = LoopState()
    stream = BatchStream(job.dataset, job.collate, tcfg.batch_size, cfg.seed, state, num_workers=tcfg.num_workers,
                         rank=dist.rank(), world=world)
    wb = None

    def evaluate_val(model):
        if not main:  # rank 0 evaluates its (identical, DDP) replica; the others wait at the loop's barrier
            return {}
        return evaluate_model(cfg, job.method.prepare_for_eval(model), job.tokenizer, job.splits, "val", run.path)

    progress = training_progress() if main else None
    loop = TrainLoop(model=job.model, method=job.method, optimizer=optimizer, scheduler=scheduler, stream=stream,
                     loss_fn=loss_fn, tcfg=tcfg, total_steps=steps, logger=None,
                     checkpoint_dir=run.checkpoints, device=job.device,
                     evaluate=evaluate_val if len(job.splits.val or []) else None, progress=progress,
                     extra_state=lambda: {"wandb_id": wb.run_id if wb else None}, step_module=step_module)
    if ckpt:
        loop.restore(ckpt)
        if on_restored:
            on_restored(job)
    # the logger comes only now: on resume it truncates metrics.jsonl after the checkpoint's step, which
    # must not happen before everything that can fail on resume has passed. Ranks > 0 log nothing.
    if main:
        logger = build_logger(cfg.logger, run.path, OmegaConf.to_container(cfg, resolve=True), run.path.name,
                              resume_step=ckpt["loop"]["step"] if ckpt else None,
                              wandb_id=(ckpt or {}).get("wandb_id"))
    else:
        logger = MultiLogger([])
    wb = logger.find(WandbLogger)
    loop.logger = logger
    if ckpt and main:
        console.print(f"resuming from step {state.step}")
    start = time.perf_counter()
    try:
        with progress if progress is not None else contextlib.nullcontext():
            loop.run()
    except BaseException:
        logger.close()
        raise
    finally:
        stream.close()
    train_time = time.perf_counter() - start
    if not main:
        return {}
    if loop.sharded:
        job = _gathered_job(job, overrides or [])
    eval_model = job.method.prepare_for_eval(job.model)
    results = evaluate_model(cfg, eval_model, job.tokenizer, job.splits, "test", run.path) if cfg.eval.enabled else {}
    job.method.export(job.model, run.export)
    if cfg.cache_as:
        publish(run.export, cfg.cache_as)
    trainable, total = count_parameters(job.model)
    summary = {
        "recipe": cfg.recipe,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "device": job.device,
        "trainable_params": trainable,
        "total_params": total,
        **summarise(state),
        "peak_memory_mb": peak_memory_mb(job.device),
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
