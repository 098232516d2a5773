"""Optimiser and learning-rate schedule (linear warm-up, then linear / cosine / constant)."""

from __future__ import annotations

import math

import torch

from sparsetune.errors import ConfigError


def build_optimizer(method, model, tcfg) -> torch.optim.Optimizer:
    groups = [g for g in method.parameter_groups(model, tcfg.lr, tcfg.weight_decay) if g["params"]]
    if not groups:
        raise ConfigError("the method left no trainable parameters")
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"trainer.schedule: unknown schedule '{schedule}'; available: linear, cosine, constant")


def build_scheduler(optimizer, tcfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, tcfg.warmup_steps, total_steps, tcfg.schedule)  # validate the name early
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tcfg.warmup_steps, total_steps, tcfg.schedule)
    )
