"""GS-LoRA building blocks against hand computations: loss terms, group sparsity and its proximal
step, the explicit merge, the H-mean, the task sequence, the data regime and CLI parsing."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from sparsetune.data.forgetting import ForgetPairs, available, collate_pairs, task_sequence
from sparsetune.errors import ConfigError
from sparsetune.eval.forgetting import h_mean, task_metrics
from sparsetune.jobs.config import compose_job as compose
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.methods.gslora import losses
from sparsetune.methods.gslora.groups import Group, build_groups, group_lasso, proximal_step, surviving
from sparsetune.methods.gslora.lora import LoRALinear, attach, merge, target_linears
from sparsetune.models import get_arch, load_model

torch.set_num_threads(1)


def tiny(name: str):
    cfg = compose([f"model={name}", "data=fashion_mnist", "method=gslora"])
    torch.manual_seed(0)
    model, _ = load_model(cfg.model)
    return cfg, model.eval()


# --- loss terms -----------------------------------------------------------------------------------
def test_forget_hinge_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))  # 0.2395
    ce1 = -math.log(1 / (math.e + 2))  # 1.5514
    bnd = 1.5
    want = (max(0.0, bnd - ce0) + max(0.0, bnd - ce1)) / 2
    assert float(losses.forget_hinge(logits, labels, bnd)) == pytest.approx(want, abs=1e-6)
    assert float(losses.forget_hinge(logits, labels, 0.1)) == 0.0  # both samples past the bound
    assert losses.default_bnd(10, 2.0) == pytest.approx(math.log(10) + 2.0)


def test_complement_forgetting_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    p0 = math.exp(2) / (math.exp(2) + 2)
    ce1 = math.log(math.e + 2)  # sample 1 is past bnd = 1.5: no term
    assert ce1 > 1.5
    loss = losses.forget_complement(logits, labels, 1.5)
    assert float(loss.detach()) == pytest.approx(-math.log(1 - p0) / 2, abs=1e-6)
    loss.backward()
    assert float(logits.grad[0, 0]) == pytest.approx(p0 / 2, abs=1e-6)  # grows with confidence
    assert torch.equal(logits.grad[1], torch.zeros(3))


def test_prototype_terms_match_hand_computation():
    feats = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    protos = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1])

    def kl(a, b):
        p = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
        q = [math.exp(x) / sum(math.exp(y) for y in b) for x in b]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    # default, the reference's: KL(p_proto || p_f), push hinge on the batch mean
    k0, k1 = kl([0.0, 0.0], [1.0, 0.0]), kl([0.0, 2.0], [0.0, 0.0])
    assert float(losses.prototype_pull(feats, labels, protos)) == pytest.approx((k0 + k1) / 2, abs=1e-6)
    bnd = 0.5
    want = max(0.0, bnd - (k0 + k1) / 2)
    assert float(losses.prototype_push(feats, labels, protos, bnd)) == pytest.approx(want, abs=1e-6)
    # the earlier forms: KL(p_f || p_proto), hinge per sample
    o0, o1 = kl([1.0, 0.0], [0.0, 0.0]), kl([0.0, 0.0], [0.0, 2.0])
    assert float(losses.prototype_pull(feats, labels, protos, "sample_to_proto")) == pytest.approx(
        (o0 + o1) / 2, abs=1e-6)
    want = (max(0.0, bnd - o0) + max(0.0, bnd - o1)) / 2
    assert float(losses.prototype_push(feats, labels, protos, bnd, "sample_to_proto", "per_sample")) == pytest.approx(
        want, abs=1e-6)


def test_group_lasso_and_alpha_warmup():
    a, b, c = (nn.Parameter(torch.tensor(v)) for v in ([3.0, 0.0], [4.0], [0.0, 0.0]))
    groups = [Group("g1", [a, b]), Group("g2", [c])]
    total = group_lasso(groups)
    assert float(total.detach()) == pytest.approx(5.0)  # sqrt(9 + 16); the all-zero group adds 0
    total.backward()
    assert (c.grad is None or not c.grad.any()) and torch.allclose(a.grad, torch.tensor([0.6, 0.0]))
    assert losses.sparsity_weight(29, 100, 0.01, 0.3) == 0.0
    assert losses.sparsity_weight(30, 100, 0.01, 0.3) == 0.01


def test_method_extra_loss_adds_each_term_with_its_weight():
    cfg, model = tiny("tiny_vit")
    cfg.method.beta, cfg.method.group_alpha, cfg.method.sparsity_warmup = 0.5, 0.01, 0.0
    cfg.method.proximal = False  # the paper's form: group lasso as a loss term
    method = build_method(cfg.method)
    method.apply(model, MethodContext.of(model))
    method.start_task(model)
    for w in method.wrapped.values():
        nn.init.normal_(w.lora_B, std=0.1)
    method.on_step(1, 10)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    xf, yf = torch.randn(3, 1, 28, 28), torch.tensor([0, 0, 5])
    out = model(pixel_values=x)
    terms = method.extra_loss(model, {"pixel_values": x, "labels": y, "forget_pixel_values": xf,
                                      "forget_labels": yf}, out)
    assert set(terms) == {"forget", "sparsity"}
    bnd = math.log(10) + 2.0
    want_f = 0.5 * losses.forget_hinge(model(pixel_values=xf).logits, yf, bnd)
    assert float(terms["forget"].detach()) == pytest.approx(float(want_f.detach()), rel=1e-6)
    by_block = {}
    for name, w in method.wrapped.items():
        block = method.targets[name][0]
        by_block[block] = by_block.get(block, 0.0) + float(((w.lora_A ** 2).sum() + (w.lora_B ** 2).sum()).detach())
    assert sorted(by_block) == [0, 1]  # one group per block
    assert float(terms["sparsity"].detach()) == pytest.approx(0.01 * sum(math.sqrt(v) for v in by_block.values()), rel=1e-5)
    method.on_step(0, 10)
    method.cfg.sparsity_warmup = 0.5
    method.on_step(4, 10)  # inside the warm-up: alpha = 0, no sparsity term
    assert "sparsity" not in method.extra_loss(model, {"pixel_values": x, "labels": y}, out)


# --- proximal step ------------------------------------------------------------------------------
def test_proximal_step_zeroes_small_groups_and_shrinks_the_rest_exactly():
    small = [nn.Parameter(torch.tensor([0.3, 0.4]))]  # norm 0.5
    big = [nn.Parameter(torch.tensor([1.2, 0.0])), nn.Parameter(torch.tensor([1.6]))]  # norm 2.0
    groups = [Group("small", small), Group("big", big)]
    opt = torch.optim.AdamW([*small, *big], lr=0.1)
    for p in (*small, *big):
        p.grad = torch.ones_like(p)
    opt.step()
    with torch.no_grad():
        small[0].copy_(torch.tensor([0.3, 0.4]))
        big[0].copy_(torch.tensor([1.2, 0.0]))
        big[1].copy_(torch.tensor([1.6]))
    zeroed = proximal_step(groups, 1.0, opt)
    assert zeroed == ["small"]
    assert torch.equal(small[0].detach(), torch.zeros(2))  # exact zeros
    assert torch.equal(opt.state[small[0]]["exp_avg"], torch.zeros(2))  # momentum cannot revive it
    assert torch.allclose(big[0].detach(), torch.tensor([0.6, 0.0])) and torch.allclose(big[1].detach(), torch.tensor([0.8]))
    assert surviving(groups) == {"big": pytest.approx(1.0)}
    before = [p.detach().clone() for p in big]
    assert proximal_step(groups[1:], 0.0) == []
    assert all(torch.equal(p.detach(), q) for p, q in zip(big, before))  # threshold 0 leaves groups unchanged


@pytest.mark.parametrize("grouping,count", [("block", 2), ("module", 4), ("matrix", 8)])
def test_groups_per_block_module_matrix(grouping, count):
    _, model = tiny("tiny_vit")
    arch = get_arch(model)
    targets = target_linears(arch, ["up", "down"], None)
    wrapped = attach(model, targets, 4, 8.0)
    groups = build_groups(targets, wrapped, grouping)
    assert len(groups) == count
    assert sum(len(g.params) for g in groups) == 8  # A and B of 2 linears in 2 blocks


def test_placement_is_resolved_through_arch_and_validated():
    _, model = tiny("tiny_deit")
    arch = get_arch(model)
    found = target_linears(arch, ["q", "down"], [1])
    assert [(b, r) for b, r, _ in found.values()] == [(1, "q"), (1, "down")]
    assert all(isinstance(m, nn.Linear) for _, _, m in found.values())
    with pytest.raises(ConfigError, match="available"):
        target_linears(arch, ["gate"], None)
    with pytest.raises(ConfigError, match="outside"):
        target_linears(arch, ["up"], [5])


# --- merge -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_vit", "tiny_deit"])
def test_merged_model_equals_lora_wrapped_model(name):
    _, model = tiny(name)
    stock_keys = set(model.state_dict())
    arch = get_arch(model)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    plain = model(pixel_values=x).logits
    wrapped = attach(model, target_linears(arch, ["up", "down"], None), 4, 8.0)
    assert torch.allclose(model(pixel_values=x).logits, plain)  # B = 0: unchanged at start
    for w in wrapped.values():
        nn.init.normal_(w.lora_B, std=0.2)
    with torch.no_grad():
        adapted = model(pixel_values=x).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)
    merge(model, wrapped)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == stock_keys  # a stock HF model again
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, adapted, atol=1e-5)
    # a second task attaches a fresh adapter to the merged weights
    again = attach(model, target_linears(arch, ["up", "down"], None), 4, 8.0)
    assert all(torch.equal(w.lora_B, torch.zeros_like(w.lora_B)) for w in again.values())


# --- metrics, sequence, data -------------------------------------------------------------------------
def test_h_mean_formula():
    assert h_mean(0.9, 0.0, 0.8) == pytest.approx(2 * 0.9 * 0.8 / 1.7)
    assert h_mean(0.9, 0.1, 0.8) == pytest.approx(2 * 0.8 * 0.8 / 1.6)
    assert h_mean(0.5, 0.5, 0.9) == 0.0  # nothing forgotten
    per_class_before = [0.9, 0.8, 0.7, 1.0]
    now = [0.0, 0.85, 0.75, 0.05]
    m = task_metrics(now, per_class_before, forgotten=[0], earlier=[3], retained=[1, 2])
    assert m["acc_f"] == 0.0 and m["acc_f_pre"] == 0.9 and m["acc_o"] == 0.05
    assert m["acc_r"] == pytest.approx(0.8) and m["h_mean"] == pytest.approx(2 * 0.9 * 0.8 / 1.7)


def test_task_sequence_random_and_explicit():
    cfg = compose(["recipe=gslora_vit", "forget.sequence=random:4x2"]).forget
    tasks = task_sequence(cfg, 10, seed=0)
    assert len(tasks) == 4 and all(len(t) == 2 for t in tasks)
    assert len({c for t in tasks for c in t}) == 8
    assert task_sequence(cfg, 10, seed=0) == tasks and task_sequence(cfg, 10, seed=1) != tasks
    explicit = compose(["recipe=gslora_vit", "forget.classes=[[3,7],[1]]"]).forget
    assert task_sequence(explicit, 10, 0) == [[3, 7], [1]]
    for bad, match in [("forget.classes=[[3,3]]", "twice"), ("forget.classes=[[12]]", "outside"),
                       ("forget.sequence=random:5x2", "retained"), ("forget.sequence=4x2", "random:TxK")]:
        with pytest.raises(ConfigError, match=match):
            task_sequence(compose(["recipe=gslora_vit", bad]).forget, 10, 0)
    with pytest.raises(ConfigError, match="nothing to forget"):
        task_sequence(compose(["recipe=gslora_vit"]).forget, 10, 0)


def test_data_ratio_and_shots_are_stratified():
    from sparsetune.data.vision import ImageDataset

    targets = torch.arange(10).repeat_interleave(50)  # 50 images per class
    ds = ImageDataset(torch.zeros(500, 1, 4, 4, dtype=torch.uint8), targets, [0.5], [0.5])
    part = available(ds, 0.1, None, seed=0)
    assert torch.equal(torch.bincount(part.targets), torch.full((10,), 5))
    assert torch.equal(torch.bincount(available(ds, 0.1, 4, seed=0).targets), torch.full((10,), 4))
    pairs = ForgetPairs(ds.with_classes([0, 1], keep=False), ds.with_classes([0, 1]))
    batch = collate_pairs([pairs[i] for i in range(6)])
    assert batch["labels"].ge(2).all() and batch["forget_labels"].lt(2).all()
    assert batch["forget_pixel_values"].shape == batch["pixel_values"].shape == (6, 1, 4, 4)


# --- CLI -------------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sparsetune.cli", *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=300)


def test_forget_cli_parses_classes_and_defaults_to_the_gslora_recipe():
    res = _cli("forget", "--classes", "3,7", "--classes", "0,1", "--cfg")
    assert res.returncode == 0, res.stderr
    assert "recipe: gslora_vit" in res.stdout and "name: gslora" in res.stdout
    assert "- - 3\n    - 7\n  - - 0\n    - 1" in res.stdout
    res = _cli("forget", "--classes", "3,x")
    assert res.returncode == 2 and "no class named" in res.stderr
    res = _cli("forget", "--classes", "1", "recipe=vit_fmnist", "method=gslora_pp", "--cfg")
    assert res.returncode == 0 and "recipe: vit_fmnist" in res.stdout and "prototypes: true" in res.stdout
