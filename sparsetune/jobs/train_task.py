"""Train one task: the assembly `train`, `prune` and every `forget` task share.

Given a job's live objects and the task's data, build the loss module (plain, DDP-wrapped or
FSDP2-sharded), the optimiser (handed to the method's context), the schedule, the seeded batch stream
and the engine's loop, restore a checkpoint if there is one, open the logger, and run to the end with
a progress bar on rank 0. What differs between the jobs — which data, which trainer settings, where
checkpoints go, how validation scores and which logger — comes in as arguments.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsetune.engine import distributed as dist
from sparsetune.engine.loop import BatchStream, LoopState, LossStep, TrainLoop
from sparsetune.engine.optim import build_optimizer, build_scheduler
from sparsetune.errors import UserError
from sparsetune.jobs.assemble import Job


def step_module(job: Job, loss_fn: Callable):
    """The loss module the loop calls: plain in one process; DDP-wrapped or FSDP2-sharded in a group.
    FSDP shards before the optimiser exists (it replaces parameters with sharded ones). Built per
    task: a forgetting task trains a fresh parameter set, which DDP registers (and broadcasts from
    rank 0, a fresh adapter's random init included) when it is built."""
    module = LossStep(job.model, loss_fn, job.method)
    if not dist.active():
        return module
    if job.cfg.trainer.strategy == "fsdp":
        return dist.shard_fsdp(module, [b.module for b in job.ctx.arch.blocks])
    return dist.wrap_ddp(module, job.device, find_unused=job.method.ddp_find_unused)


@dataclass
class TaskResult:
    loop: TrainLoop
    state: LoopState
    logger: Any
    seconds: float  # wall time of the loop alone


def train_task(job: Job, *, dataset, collate: Callable, tcfg, steps: int, seed: int, loss_fn: Callable,
               checkpoint_dir: Path, open_logger: Callable[[], Any], evaluate=None, progress=None,
               ckpt: dict | None = None, on_restored: Callable[[], None] | None = None,
               extra_state: Callable[[], dict] | None = None, state: LoopState | None = None) -> TaskResult:
    """Run `steps` optimiser steps of `job.method` on `dataset`.

    `open_logger` is called only after a checkpoint is restored (a resumed logger truncates
    metrics.jsonl after the checkpoint's step, which must not happen before everything that can fail
    on resume has passed); it is closed here if training fails, and left open for the caller otherwise.
    `progress` is the rank-0 progress display (None elsewhere); `state`, the loop's progress record,
    for a caller whose validation hook reads the step (selection that starts late)."""
    module = step_module(job, loss_fn)
    optimizer = build_optimizer(job.method, job.model, tcfg)
    job.ctx.optimizer = optimizer
    scheduler = build_scheduler(optimizer, tcfg, steps)
    if ckpt and int(ckpt["loop"]["step"]) > steps:
        raise UserError(f"trainer.max_steps={steps} is below the checkpoint's step {ckpt['loop']['step']}; "
                        "resume with trainer.max_steps of at least that")
    state = state if state is not None else LoopState()
    lengths = getattr(dataset, "lengths", None) if getattr(tcfg, "group_by_length", False) else None
    stream = BatchStream(dataset, collate, tcfg.batch_size, seed, state, num_workers=tcfg.num_workers,
                         rank=dist.rank(), world=dist.world_size(), lengths=lengths)
    loop = TrainLoop(model=job.model, method=job.method, optimizer=optimizer, scheduler=scheduler, stream=stream,
                     loss_fn=loss_fn, tcfg=tcfg, total_steps=steps, logger=None, checkpoint_dir=checkpoint_dir,
                     device=job.device, evaluate=evaluate, progress=progress, extra_state=extra_state,
                     step_module=module)
    logger = None
    try:
        if ckpt:
            loop.restore(ckpt)
            if on_restored:
                on_restored()
        loop.logger = logger = open_logger()
        start = time.perf_counter()
        with progress if progress is not None else contextlib.nullcontext():
            loop.run()
        seconds = time.perf_counter() - start
    except BaseException:
        if logger is not None:
            logger.close()
        raise
    finally:
        stream.close()
    return TaskResult(loop, state, logger, seconds)
