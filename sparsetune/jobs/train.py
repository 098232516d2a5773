"""The `train` and `prune` jobs: set up, run the engine's loop, evaluate on the held-out split,
export, write summary.json."""

from __future__ import annotations

import math
import time
from typing import Any

from sparsetune.engine import losses
from sparsetune.engine.logging import WandbLogger, build_logger
from sparsetune.engine.loop import BatchStream, LoopState, TrainLoop, summarise
from sparsetune.engine.measure import count_parameters, peak_memory_mb
from sparsetune.engine.optim import build_optimizer, build_scheduler
from sparsetune.engine.progress import console, training_progress
from sparsetune.errors import UserError
from sparsetune.eval.suite import evaluate_model
from sparsetune.jobs.assemble import Job, setup
from sparsetune.jobs.common import eval_log, print_summary, publish, show_method_output


def total_steps(tcfg, n_examples: int) -> int:
    if tcfg.epochs:
        per_epoch = max(1, n_examples // tcfg.batch_size)
        return max(1, math.ceil(tcfg.epochs * per_epoch / tcfg.grad_accum))
    return tcfg.max_steps


def run_train(cfg, overrides: list[str], job: str = "train") -> dict[str, Any]:
    """`sparsetune train` / `prune`: a new run, or the continuation of `cfg.resume`.

    On resume the checkpoint is verified and loaded first (a missing or damaged one is a one-line
    UserError, never a silent restart), and the run folder is only written to once it is restored."""
    ckpt, on_restored = None, None
    if cfg.resume:
        from sparsetune.jobs.resume import load_resume_checkpoint, record_resume

        ckpt = load_resume_checkpoint(cfg)
        on_restored = lambda job: record_resume(job.run, cfg, overrides)  # noqa: E731
    return train(setup(cfg, overrides, job, method_state=ckpt["method"] if ckpt else None), ckpt=ckpt,
                 on_restored=on_restored)


def train(job: Job, ckpt: dict | None = None, on_restored=None) -> dict[str, Any]:
    """Run the loop to the end, evaluate on the held-out split, export, write summary.json."""
    from omegaconf import OmegaConf

    cfg, run = job.cfg, job.run
    tcfg = cfg.trainer
    steps = total_steps(tcfg, len(job.dataset))
    optimizer = build_optimizer(job.method, job.model, tcfg)
    job.ctx.optimizer = optimizer
    scheduler = build_scheduler(optimizer, tcfg, steps)
    if ckpt and int(ckpt["loop"]["step"]) > steps:
        raise UserError(f"trainer.max_steps={steps} is below the checkpoint's step {ckpt['loop']['step']}; "
                        "resume with trainer.max_steps of at least that")
    state = LoopState()
    stream = BatchStream(job.dataset, job.collate, tcfg.batch_size, cfg.seed, state, num_workers=tcfg.num_workers)
    wb = None

    def evaluate_val(model):
        return evaluate_model(cfg, job.method.prepare_for_eval(model), job.tokenizer, job.splits, "val", run.path)

    progress = training_progress()
    loop = TrainLoop(model=job.model, method=job.method, optimizer=optimizer, scheduler=scheduler, stream=stream,
                     loss_fn=losses.task_loss(cfg.model.task), tcfg=tcfg, total_steps=steps, logger=None,
                     checkpoint_dir=run.checkpoints, device=job.device,
                     evaluate=evaluate_val if len(job.splits.val or []) else None, progress=progress,
                     extra_state=lambda: {"wandb_id": wb.run_id if wb else None})
    if ckpt:
        loop.restore(ckpt)
        if on_restored:
            on_restored(job)
    # the logger comes only now: on resume it truncates metrics.jsonl after the checkpoint's step, which
    # must not happen before everything that can fail on resume has passed
    logger = build_logger(cfg.logger, run.path, OmegaConf.to_container(cfg, resolve=True), run.path.name,
                          resume_step=ckpt["loop"]["step"] if ckpt else None,
                          wandb_id=(ckpt or {}).get("wandb_id"))
    wb = logger.find(WandbLogger)
    loop.logger = logger
    if ckpt:
        console.print(f"resuming from step {state.step}")
    start = time.perf_counter()
    try:
        with progress:
            loop.run()
    except BaseException:
        logger.close()
        raise
    train_time = time.perf_counter() - start
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
        "eval": results,
        **job.method.metrics(),
    }
    run.write_summary(summary)
    logger.log(eval_log(results), state.step)
    logger.summary(summary)
    logger.close()
    show_method_output(job.method)
    print_summary(summary, run)
    return summary
