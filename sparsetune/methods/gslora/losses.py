"""The GS-LoRA / GS-LoRA++ loss terms (the retained CE is the engine's classification loss).

Where we differ from the paper: its BND (105-110) bounds the forgotten-class CE of CosFace logits
with scale s=64. Our HF classifiers have plain linear logits, whose CE lives on another scale, so
the bound is ln(K) + margin: once CE_i > ln(K) the true class has p < 1/K and can no longer be the
argmax, and the margin (default 2, p < e^-2/K) leaves room for drift. The hinge is applied per
sample and then averaged (the paper hinges the batch mean), so a few samples with huge CE cannot
satisfy the bound for the rest of the batch. The GS-LoRA++ prototype terms follow the reference
code by default (KL(p_proto || p_f), push hinge on the batch-mean KL); the project's earlier forms
stay as options (KL_DIRECTIONS, PUSH_REDUCTIONS).
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


# The prototype KL's argument order (method.proto_kl). proto_to_sample is the reference code's:
# F.kl_div(log_softmax(f), log_softmax(proto), log_target=True) = KL(p_proto || p_f). sample_to_proto,
# KL(p_f || p_proto), is the order this project computed before issue #23; kept as an option so the
# two can be compared (docs/methods/gslora.md, "Four tasks of two classes").
KL_DIRECTIONS = ("proto_to_sample", "sample_to_proto")
# How the push hinge meets the batch (method.proto_push). batch_mean is the reference's:
# ReLU(bnd - mean_i KL_i). per_sample, mean_i ReLU(bnd - KL_i), is this project's earlier form (as for
# the CE hinge: a few samples far beyond bnd cannot satisfy the bound for the rest of the batch).
PUSH_REDUCTIONS = ("batch_mean", "per_sample")


def kl_to_prototype(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                    direction: str = "proto_to_sample") -> torch.Tensor:
    """Per-sample KL between softmax(f(x)) and softmax(proto_y), in the order `direction` names.

    proto_to_sample, KL(p_proto || p_f) = CE(p_proto, p_f) - H(p_proto), is unbounded above (it grows
    without limit as p_f empties the classes the prototype holds); sample_to_proto, KL(p_f || p_proto),
    is at most -log min_k p_proto,k."""
    log_f = F.log_softmax(features.float(), dim=-1)
    log_p = F.log_softmax(prototypes[labels].float(), dim=-1)
    if direction == "proto_to_sample":
        return (log_p.exp() * (log_p - log_f)).sum(dim=-1)
    if direction == "sample_to_proto":
        return (log_f.exp() * (log_f - log_p)).sum(dim=-1)
    raise ValueError(f"unknown KL direction '{direction}'; available: {', '.join(KL_DIRECTIONS)}")


def prototype_pull(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                   direction: str = "proto_to_sample") -> torch.Tensor:
    """Retained samples stay close to their class prototype: mean KL (0 for no samples)."""
    if not len(labels):
        return features.float().sum() * 0.0
    return kl_to_prototype(features, labels, prototypes, direction).mean()


def prototype_push(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, bnd: float,
                   direction: str = "proto_to_sample", reduction: str = "batch_mean") -> torch.Tensor:
    """Forgotten samples move away from their old prototype until KL reaches bnd (0 for no samples):
    batch_mean ReLU(bnd - mean_i KL_i) (the reference) | per_sample mean_i ReLU(bnd - KL_i)."""
    if not len(labels):
        return features.float().sum() * 0.0
    kl = kl_to_prototype(features, labels, prototypes, direction)
    if reduction == "batch_mean":
        return F.relu(bnd - kl.mean())
    if reduction == "per_sample":
        return F.relu(bnd - kl).mean()
    raise ValueError(f"unknown push reduction '{reduction}'; available: {', '.join(PUSH_REDUCTIONS)}")
