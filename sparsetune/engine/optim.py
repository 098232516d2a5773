"""Optimiser and learning-rate schedule: `transformers.get_scheduler` after a linear warm-up.

`trainer.schedule` names a transformers schedule (see SCHEDULES); "constant" means transformers'
`constant_with_warmup`, since every schedule here warms up over `trainer.warmup_steps`.

Warm-up convention: transformers starts warm-up at lr 0 (factor step / warmup, 0-based step); this
project has always started at lr / warmup (factor (step + 1) / warmup), so the first optimiser step is
never wasted at lr 0. The warm-up factor is kept as it was; after warm-up the factor is transformers'
own (for linear, cosine and constant identical to the former home-made `lr_factor`, tested).
"""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from sparsetune.config.schema import SCHEDULES
from sparsetune.errors import ConfigError


def build_optimizer(method, model, tcfg) -> torch.optim.Optimizer:
    groups = [g for g in method.parameter_groups(model, tcfg.lr, tcfg.weight_decay) if g["params"]]
    if not groups:
        raise ConfigError("the method left no trainable parameters")
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay)


def check_schedule(name: str) -> str:
    """The transformers name for `trainer.schedule`; ConfigError (one line, valid names) if unknown."""
    if name not in SCHEDULES:
        raise ConfigError(f"trainer.schedule: unknown schedule '{name}'; available: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Closed form of the linear / cosine / constant multiplier at optimiser step `step` (0-based): the
    reference the transformers-built schedules are tested against."""
    check_schedule(schedule)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule in ("cosine", "cosine_with_restarts"):
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"trainer.schedule: no closed form for '{schedule}' here")


def _warmup_first(schedule, warmup: int):
    """transformers' multiplier with this project's warm-up: (step + 1) / warmup during warm-up.
    A plain function, so LambdaLR's state_dict stays free of it (the step count is all it needs)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return schedule(step)

    return factor


def build_scheduler(optimizer, tcfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers.get_scheduler(name, optimizer, warm-up, total) with the warm-up convention above.
    Its state_dict (the step count) round-trips for an exact resume."""
    name = check_schedule(tcfg.schedule)
    warmup = int(tcfg.warmup_steps or 0)
    # LambdaLR evaluates the factor of step 0 at construction; the lr set here is overwritten below
    try:
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=int(total_steps))
    except ValueError as err:  # e.g. polynomial with trainer.lr below its end lr
        raise ConfigError(f"trainer.schedule={tcfg.schedule}: {err}") from err
    if warmup > 0:
        scheduler.lr_lambdas = [_warmup_first(fn, warmup) for fn in scheduler.lr_lambdas]
        for group, base_lr, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return scheduler
