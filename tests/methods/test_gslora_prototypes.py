"""GS-LoRA++ prototype terms: the KL order and push hinge as the reference code computes them
(bjzhb666/GS-LoRA: F.kl_div(log_softmax(f), log_softmax(proto), log_target=True), batch-mean hinge),
the project's earlier forms as options, and prototypes across a task sequence: a class forgotten in
an earlier task keeps the prototype it had when the model still knew it, so the push keeps it away
from where it used to sit (a zero row would compare against a uniform distribution, which in the
reference's order any confident prediction, the forgotten class's own included, gets past)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsetune.errors import ConfigError
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
    """With the carried-over prototype the push is met once a forgotten sample left where its class
    used to sit, and active while the sample still sits there. A zero row (uniform prototype) fails
    both ways: in the reference's order KL(u || p_f) = -ln K - mean_k log p_f,k is large for any
    confident prediction, so a sample still predicted as its forgotten class meets the hinge; in the
    earlier order KL(p_f || u) <= ln K < BND_pro, so the hinge is never met."""
    model, method = pp_method()
    with torch.no_grad():
        method.arch.head.weight.mul_(100.0)  # a confident classifier: peaked class prototypes
    method.start_task(model, ForgetTask(1, [0, 1], [], list(range(2, 10)), batches_of(list(range(10)))))
    method.end_task(model)
    method.start_task(model, ForgetTask(2, [2], [0, 1], list(range(3, 10)), batches_of(list(range(2, 10)))))
    protos, bnd = method.prototypes, method.cfg.proto_bnd
    proto0 = protos[0]
    assert proto0.abs().sum() > 0
    label = torch.tensor([0])
    # far: all mass where the old prototype put the least; near: the class's old output itself
    far = torch.full((1, 10), -30.0)
    far[0, int(proto0.argmin())] = 30.0
    near = proto0[None].clone()
    assert float(losses.prototype_push(far, label, protos, bnd)) == 0.0  # met: the sample moved away
    assert float(losses.prototype_push(near, label, protos, bnd)) > 0.0  # active: it still sits there
    uniform = torch.zeros_like(protos)  # what a zero row would be compared against
    assert float(losses.prototype_push(near, label, uniform, bnd)) == 0.0  # met without forgetting
    assert float(losses.prototype_push(far, label, protos, bnd, "sample_to_proto")) == 0.0  # earlier order: met
    assert float(losses.prototype_push(near, label, protos, bnd, "sample_to_proto")) > 0.0  # and active
    # earlier order against a zero row: KL(p_f || u) <= ln K < BND_pro, the hinge can never be met
    assert float(losses.prototype_push(far, label, uniform, bnd, "sample_to_proto")) >= bnd - math.log(10) - 1e-5 > 0


def reference_kl(features: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p_proto || p_f) written with torch's F.kl_div(input=log q, target=p) = KL(p || q),
    q the sample's distribution and p the prototype's (the reference code's argument order)."""
    return F.kl_div(F.log_softmax(features, -1), F.softmax(protos[labels], -1), reduction="none").sum(-1)


def sample_to_proto_kl(features: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(protos[labels], -1), F.softmax(features, -1), reduction="none").sum(-1)


def test_default_kl_is_the_reference_order_and_the_option_the_earlier_one():
    gen = torch.Generator().manual_seed(0)
    feats, protos = 3 * torch.randn(6, 10, generator=gen), 3 * torch.randn(10, 10, generator=gen)
    labels = torch.tensor([0, 3, 3, 7, 9, 1])
    want, other = reference_kl(feats, labels, protos), sample_to_proto_kl(feats, labels, protos)
    assert (want - other).abs().max() > 0.1  # the two orders differ on these tensors
    assert torch.allclose(losses.kl_to_prototype(feats, labels, protos), want, atol=1e-5)
    batchmean = F.kl_div(F.log_softmax(feats, -1), F.log_softmax(protos[labels], -1), reduction="batchmean",
                         log_target=True)  # the reference's pull, as it writes it
    assert float(losses.prototype_pull(feats, labels, protos)) == pytest.approx(float(batchmean), rel=1e-5)
    assert torch.allclose(losses.kl_to_prototype(feats, labels, protos, "sample_to_proto"), other, atol=1e-5)
    assert float(losses.prototype_pull(feats, labels, protos, "sample_to_proto")) == pytest.approx(
        float(other.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="proto_to_sample"):
        losses.kl_to_prototype(feats, labels, protos, "both")


def test_default_push_hinges_the_batch_mean_and_the_option_each_sample():
    protos = 12.0 * torch.eye(10)  # peaked prototypes
    labels = torch.tensor([2, 3])
    feats = torch.stack([protos[5], protos[3]])  # sample 0 far beyond the bound, sample 1 on its prototype
    bnd = 4.0
    kl = reference_kl(feats, labels, protos)
    assert float(kl[0]) > bnd > float(kl[1])
    batch_mean = F.relu(bnd - kl.mean())  # the reference: ReLU(BND_pro - batchmean KL)
    per_sample = F.relu(bnd - kl).mean()
    assert float(batch_mean) != pytest.approx(float(per_sample), abs=0.1)
    assert float(losses.prototype_push(feats, labels, protos, bnd)) == pytest.approx(float(batch_mean), abs=1e-5)
    assert float(losses.prototype_push(feats, labels, protos, bnd, reduction="per_sample")) == pytest.approx(
        float(per_sample), abs=1e-5)
    old = F.relu(bnd - sample_to_proto_kl(feats, labels, protos)).mean()  # the project's form before issue #23
    assert float(losses.prototype_push(feats, labels, protos, bnd, "sample_to_proto", "per_sample")) == pytest.approx(
        float(old), abs=1e-5)
    with pytest.raises(ValueError, match="batch_mean"):
        losses.prototype_push(feats, labels, protos, bnd, reduction="sum")


def test_the_method_computes_the_configured_forms():
    model, method = pp_method()
    assert (method.cfg.proto_kl, method.cfg.proto_push) == ("proto_to_sample", "batch_mean")
    with torch.no_grad():
        method.arch.head.weight.mul_(30.0)  # logits far enough apart that the two orders differ clearly
    method.start_task(model, ForgetTask(1, [0, 1], [], list(range(2, 10)), batches_of(list(range(10)))))
    gen = torch.Generator().manual_seed(3)
    x_r, x_f = torch.randn(4, 1, 28, 28, generator=gen), torch.randn(4, 1, 28, 28, generator=gen)
    y_r, y_f = torch.tensor([2, 5, 5, 9]), torch.tensor([0, 1, 1, 0])
    batch = {"pixel_values": x_r, "labels": y_r, "forget_pixel_values": x_f, "forget_labels": y_f}
    protos, cfg = method.prototypes, method.cfg
    with torch.no_grad():
        f_r, f_f = model(pixel_values=x_r).logits, model(pixel_values=x_f).logits

        def terms():
            out = method.extra_loss(model, batch, model(pixel_values=x_r))
            return float(out["proto_retain"]), float(out["proto_forget"])

        pull, push = terms()
        assert pull == pytest.approx(cfg.proto_retain_weight * float(reference_kl(f_r, y_r, protos).mean()), rel=1e-4)
        assert push == pytest.approx(
            cfg.proto_forget_weight * float(F.relu(cfg.proto_bnd - reference_kl(f_f, y_f, protos).mean())), rel=1e-4)
        cfg.proto_kl, cfg.proto_push = "sample_to_proto", "per_sample"
        pull_old, push_old = terms()
        assert pull_old == pytest.approx(
            cfg.proto_retain_weight * float(sample_to_proto_kl(f_r, y_r, protos).mean()), rel=1e-4)
        assert push_old == pytest.approx(
            cfg.proto_forget_weight * float(F.relu(cfg.proto_bnd - sample_to_proto_kl(f_f, y_f, protos)).mean()),
            rel=1e-4)
        assert pull != pytest.approx(pull_old, rel=1e-3)


def test_the_forms_compose_and_unknown_ones_are_refused():
    cfg = compose(["model=tiny_vit", "data=fashion_mnist", "method=gslora_pp", "method.proto_kl=sample_to_proto",
                   "method.proto_push=per_sample"])
    assert (cfg.method.proto_kl, cfg.method.proto_push) == ("sample_to_proto", "per_sample")
    with pytest.raises(ConfigError, match="method.proto_kl"):
        compose(["model=tiny_vit", "data=fashion_mnist", "method=gslora_pp", "method.proto_kl=sample"])
    with pytest.raises(ConfigError, match="method.proto_push"):
        compose(["model=tiny_vit", "data=fashion_mnist", "method=gslora_pp", "method.proto_push=sum"])


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
