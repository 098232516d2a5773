"""The GS-LoRA / GS-LoRA++ loss terms (the retained CE is the engine's classification loss).

Where we differ from the paper: its BND (105-110) bounds the forgotten-class CE of CosFace logits
with scale s=64. Our HF classifiers have plain linear logits, whose CE lives on another scale, so
the bound is ln(K) + margin: once CE_i > ln(K) the true class has p < 1/K and can no longer be the
argmax, and the margin (default 2, p < e^-2/K) leaves room for drift. The hinge is applied per
sample and then averaged (the paper hinges the batch mean), so a few samples with huge CE cannot
satisfy the bound for the rest of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def default_bnd(num_labels: int, margin: float) -> float:
    return math.log(num_labels) + margin


def forget_hinge(logits: torch.Tensor, labels: torch.Tensor, bnd: float) -> torch.Tensor:
    """mean_i ReLU(bnd - CE(logits_i, y_i)) over the forgotten samples."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    return F.relu(bnd - ce).mean()


def forget_complement(logits: torch.Tensor, labels: torch.Tensor, bnd: float) -> torch.Tensor:
    """mean_i [CE_i < bnd] * -log(1 - p_y,i): same stopping point as the hinge, but its gradient
    (p_y on the true logit) does not vanish on confidently classified samples, where the CE hinge's
    (1 - p_y) does and forgetting stalls."""
    logits = logits.float()
    ce = F.cross_entropy(logits, labels, reduction="none")
    others = logits.scatter(1, labels[:, None], float("-inf"))
    complement = torch.logsumexp(logits, dim=-1) - torch.logsumexp(others, dim=-1)
    return ((ce < bnd).float() * complement).mean()


FORGET_LOSSES = {"hinge": forget_hinge, "complement": forget_complement}


def sparsity_weight(step: int, total_steps: int, alpha: float, warmup: float) -> float:
    """alpha after the warm-up share of the task's steps, 0 before (the paper's alpha warm-up)."""
    return alpha if step >= warmup * total_steps else 0.0


def kl_to_prototype(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(softmax(f(x)) || softmax(proto_y)), as the paper writes KL(f(x) || p_y)."""
    log_p = F.log_softmax(features.float(), dim=-1)
    log_q = F.log_softmax(prototypes[labels].float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def prototype_pull(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Retained samples stay close to their class prototype: mean KL (0 for no samples)."""
    if not len(labels):
        return features.float().sum() * 0.0
    return kl_to_prototype(features, labels, prototypes).mean()


def prototype_push(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                   bnd: float) -> torch.Tensor:
    """Forgotten samples move away from their old prototype until KL reaches bnd: mean ReLU(bnd - KL)
    (0 for no samples)."""
    if not len(labels):
        return features.float().sum() * 0.0
    return F.relu(bnd - kl_to_prototype(features, labels, prototypes)).mean()
