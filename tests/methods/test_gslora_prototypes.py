"""GS-LoRA++ prototypes across a task sequence: a class forgotten in an earlier task keeps the
prototype it had when the model still knew it, so the push term for it can be met (a zero row
would compare against a uniform distribution, KL <= ln K < BND_pro, and never be satisfied)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsetune.jobs.config import compose_job as compose
from sparsetune.methods import build_method
from sparsetune.methods.base import ForgetTask, MethodContext
from sparsetune.methods.gslora import losses
from sparsetune.models import load_model

torch.set_num_threads(1)


def batches_of(classes: list[int], per_class: int = 3, seed: int = 0):
    """Random images for `classes` (what the job hands over: retained + this task's classes)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    images = torch.randn(len(labels), 1, 28, 28, generator=gen)
    return lambda: iter([{"pixel_values": images, "labels": labels}])


def pp_method(proto_on: str = "logits"):
    cfg = compose(["model=tiny_vit", "data=fashion_mnist", "method=gslora_pp", f"method.proto_on={proto_on}"])
    torch.manual_seed(0)
    model, _ = load_model(cfg.model)
    method = build_method(cfg.method)
    method.apply(model, MethodContext.of(model))
    return model, method


def test_earlier_forgotten_classes_keep_the_prototype_from_when_they_were_known():
    model, method = pp_method()
    all_classes = list(range(10))
    method.start_task(model, ForgetTask(1, [0, 1], [], list(range(2, 10)), batches_of(all_classes)))
    first = method.prototypes.clone()
    assert first.abs().sum(dim=1).gt(0).all()  # every class seen at task 1 has a prototype
    for w in method.wrapped.values():  # the task changes the model
        nn.init.normal_(w.lora_B, std=0.3)
    method.end_task(model)
    # task 2: the job hands over retained + current classes only (0 and 1 are gone from its data)
    method.start_task(model, ForgetTask(2, [2, 3], [0, 1], list(range(4, 10)), batches_of(list(range(2, 10)), seed=1)))
    second = method.prototypes
    assert torch.equal(second[[0, 1]], first[[0, 1]])  # earlier-forgotten: carried over, not zero
    assert not torch.allclose(second[2:], first[2:])  # the others: recomputed from the model entering task 2


def test_push_term_for_an_earlier_forgotten_class_can_be_met():
    """With the carried-over prototype the hinge is zero once the sample moved far from where the
    class used to sit; a zero prototype row would keep it at BND_pro - KL(p || uniform) > 0 forever."""
    model, method = pp_method()
    with torch.no_grad():
        method.arch.head.weight.mul_(100.0)  # a confident classifier: peaked class prototypes
    method.start_task(model, ForgetTask(1, [0, 1], [], list(range(2, 10)), batches_of(list(range(10)))))
    method.end_task(model)
    method.start_task(model, ForgetTask(2, [2], [0, 1], list(range(3, 10)), batches_of(list(range(2, 10)))))
    proto0 = method.prototypes[0]
    assert proto0.abs().sum() > 0
    # a forgotten sample of class 0 whose logits put all mass where the old prototype put the least
    far = torch.full((1, 10), -30.0)
    far[0, int(proto0.argmin())] = 30.0
    bnd = method.cfg.proto_bnd
    push = losses.prototype_push(far, torch.tensor([0]), method.prototypes, bnd)
    uniform_kl = math.log(10)  # the most a zero (uniform) prototype row could ever give
    assert uniform_kl < bnd
    assert float(push) == 0.0


def test_embedding_prototypes_are_carried_over_too():
    model, method = pp_method("embeddings")
    method.start_task(model, ForgetTask(1, [5], [], [c for c in range(10) if c != 5], batches_of(list(range(10)))))
    first = method.prototypes.clone()
    method.end_task(model)
    method.start_task(model, ForgetTask(2, [6], [5], [c for c in range(10) if c not in (5, 6)],
                                        batches_of([c for c in range(10) if c != 5])))
    assert torch.equal(method.prototypes[5], first[5]) and first[5].abs().sum() > 0


def test_samples_of_a_class_without_prototype_stay_out_of_the_prototype_terms():
    model, method = pp_method()
    method.cfg.beta = 0.0
    # a task start that saw no image of classes 0 and 1: they have no prototype
    method.start_task(model, ForgetTask(1, [2], [], list(range(3, 10)), batches_of(list(range(2, 10)))))
    assert method.proto_known.tolist() == [False, False] + [True] * 8
    x = torch.randn(2, 1, 28, 28)
    batch = {"pixel_values": x, "labels": torch.tensor([5, 6]), "forget_pixel_values": x,
             "forget_labels": torch.tensor([0, 2])}
    terms = method.extra_loss(model, batch, model(pixel_values=x))
    logits = model(pixel_values=x[1:]).logits
    want = method.cfg.proto_forget_weight * losses.prototype_push(logits, torch.tensor([2]), method.prototypes,
                                                                  method.cfg.proto_bnd)
    assert float(terms["proto_forget"].detach()) == pytest.approx(float(want.detach()), rel=1e-5)  # class 2 only
    batch["forget_labels"] = torch.tensor([0, 1])
    assert float(method.extra_loss(model, batch, model(pixel_values=x))["proto_forget"].detach()) == 0.0
