"""Measure one training step (forward + backward + optimiser step) of a method on synthetic tokens,
with the same loss function and attention implementation the trainer uses."""

from __future__ import annotations

from typing import Any

import torch

from sparsetune.bench.worker import worker_setup
from sparsetune.engine.grad_checkpoint import enable_gradient_checkpointing
from sparsetune.engine.lean_mlp import make_mlps_lean
from sparsetune.engine.losses import causal_lm_loss
from sparsetune.engine.measure import StepTimer, count_parameters, peak_memory_mb, reset_peak_memory
from sparsetune.engine.optim import build_optimizer
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.models import load_model


def measure_train_step(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    device = worker_setup(cfg, settings)
    model, _ = load_model(cfg.model)
    method = build_method(cfg.method)
    ctx = MethodContext.of(model)
    model = method.apply(model, ctx).to(device)
    if cfg.trainer.lean_mlp:
        make_mlps_lean(model)
    if cfg.trainer.gradient_checkpointing:
        enable_gradient_checkpointing(model, ctx.arch)
    model.train()
    optimizer = build_optimizer(method, model, cfg.trainer)
    batch, seq = settings["batch"], settings["seq"]
    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) \
        if cfg.trainer.precision == "bf16" else torch.autocast(device_type="cpu", enabled=False)
    timer = StepTimer(device)
    reset_peak_memory(device)
    for _ in range(settings.get("warmup", 2) + settings.get("steps", 5)):
        with timer.step():
            with autocast:
                loss_sum, n, _ = causal_lm_loss(model, data)
            (loss_sum / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    trainable, total = count_parameters(model)
    return {
        "step_time_s": timer.median(skip_warmup=settings.get("warmup", 2)),
        "peak_memory_mb": peak_memory_mb(device),
        "trainable_params": trainable,
        "total_params": total,
        "tokens_per_s": batch * seq / timer.median(skip_warmup=settings.get("warmup", 2)),
    }
