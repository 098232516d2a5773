"""Task losses, returned as (sum, count) so gradient accumulation weights every token/image equally.

The causal-LM loss applies the output head only to positions that carry a label, so logits are
never materialised for prompt or padding tokens, and walks those in chunks (train/head_loss.py), so
no vocabulary-sized buffer is kept for backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sparsetune.engine.head_loss import head_cross_entropy


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The stock HF model inside a PEFT wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, Any]:
    core = unwrap(model)
    outputs = core.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    hidden = outputs.last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    cap = getattr(core.config.get_text_config(), "final_logit_softcapping", None)
    loss_sum = head_cross_entropy(hidden[keep], core.get_output_embeddings(), labels[keep], softcap=cap)
    return loss_sum, int(keep.sum()), outputs


def classification_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, Any]:
    outputs = model(pixel_values=batch["pixel_values"])
    loss_sum = F.cross_entropy(outputs.logits.float(), batch["labels"], reduction="sum")
    return loss_sum, int(batch["labels"].numel()), outputs


def task_loss(task: str):
    return causal_lm_loss if task == "causal_lm" else classification_loss
