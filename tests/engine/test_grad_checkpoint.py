"""Gradient (activation) checkpointing: same loss and gradients with and without, for every training
method on tiny Llama, and fewer bytes kept for backward (S²FT: composed with partial backprop)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sparsetune.engine.grad_checkpoint import (
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    is_checkpointed,
    saved_tensors,
)
from sparsetune.engine.lean_mlp import make_mlps_lean
from sparsetune.engine.losses import causal_lm_loss
from sparsetune.methods import method_class
from sparsetune.methods.base import MethodContext
from sparsetune.models.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[2]
# fp32 on CPU: recomputation replays the same kernels, so differences are rounding at most
ATOL, RTOL = 1e-6, 1e-5

METHODS = {
    "full": {},
    "lora": {"r": 4, "target_modules": ["q", "v", "up", "down"]},
    "dora": {"r": 4, "target_modules": ["q_proj", "down"]},
    "s2ft": {"o_ratio": 0.5, "v_ratio": 0.5, "d_ratio": 0.2, "u_ratio": 0.2},
    # backprop stops below the top third of the blocks
    "s2ft_top": {"o_ratio": 0.5, "d_ratio": 0.2, "top_fraction": 0.34},
    "pat": {"rank": 4, "r": 2, "dropout": 0.1},  # dropout: the replay must reuse the RNG state
}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def tiny_llama():
    spec = yaml.safe_load((ROOT / "recipes" / "model" / "tiny_llama.yaml").read_text())
    return build_tiny(spec["model_type"], spec["config"], seed=0)


def build(name: str, checkpointing: bool, lean: bool = True):
    model = tiny_llama()
    method_name = "s2ft" if name.startswith("s2ft") else name
    cls = method_class(method_name)
    method = cls(cls.config_class(**METHODS[name]))
    ctx = MethodContext.of(model)
    model = method.apply(model, ctx)
    if lean:
        make_mlps_lean(model)
    if checkpointing:
        assert enable_gradient_checkpointing(model, ctx.arch) == ctx.arch.num_layers
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained tensors away from their (often zero) init, identically in both builds
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.train(), method


def batch():
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def loss_and_grads(model, method_name: str):
    torch.manual_seed(0)
    b = batch()
    with saved_tensors(model) as saved:
        loss_sum, n, _ = causal_lm_loss(model, b)
    (loss_sum / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss_sum.detach() / n), grads, saved.bytes


@pytest.mark.parametrize("name", list(METHODS))
def test_same_loss_and_gradients_with_checkpointing(name):
    plain, _ = build(name, checkpointing=False)
    ckpt, _ = build(name, checkpointing=True)
    loss_a, grads_a, bytes_a = loss_and_grads(plain, name)
    loss_b, grads_b, bytes_b = loss_and_grads(ckpt, name)
    assert loss_a == pytest.approx(loss_b, rel=RTOL, abs=ATOL)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], atol=ATOL, rtol=RTOL, msg=key)
    assert bytes_b < bytes_a


def test_s2ft_checkpointing_keeps_fewer_bytes_and_top_blocks_keep_least():
    figures = {}
    for name in ("s2ft", "s2ft_top"):
        for ckpt in (False, True):
            model, _ = build(name, checkpointing=ckpt)
            figures[name, ckpt] = loss_and_grads(model, name)[2]
    assert figures["s2ft", True] < 0.7 * figures["s2ft", False]
    assert figures["s2ft_top", True] < figures["s2ft_top", False]
    # partial backprop still applies under checkpointing: the lower blocks keep nothing at all
    assert figures["s2ft_top", True] < figures["s2ft", True]


def test_eval_and_no_grad_do_not_checkpoint_and_disable_restores():
    model, _ = build("lora", checkpointing=True)
    model.eval()
    with torch.no_grad():
        out = causal_lm_loss(model, batch())[0]
    assert torch.isfinite(out)
    assert model.config.use_cache is False
    from sparsetune.engine.losses import unwrap
    from sparsetune.models import get_arch

    blocks = [b.module for b in get_arch(unwrap(model)).blocks]
    assert all(is_checkpointed(b) for b in blocks)
    assert enable_gradient_checkpointing(model) == len(blocks)  # idempotent, arch found through PEFT
    assert disable_gradient_checkpointing(model) == len(blocks)
    assert not any(is_checkpointed(b) or "forward" in vars(b) for b in blocks)


def test_trainer_flag_applies_checkpointing(tmp_path, monkeypatch):
    from sparsetune.jobs.assemble import setup
    from sparsetune.jobs.config import compose_job

    monkeypatch.setenv("SPARSETUNE_RUNS", str(tmp_path))
    cfg = compose_job(["recipe=s2ft_llama", "model=tiny_llama", "data=synthetic_arith", "logger=quiet", "data.train_size=16",
                       "trainer.gradient_checkpointing=true", "trainer.device=cpu"])
    job = setup(cfg, [], create_run=False)
    from sparsetune.engine.losses import unwrap
    from sparsetune.models import get_arch

    assert all(is_checkpointed(b.module) for b in get_arch(unwrap(job.model)).blocks)
