"""The prune-then-LoRA baseline's RMSNorm correction: the same exact fold PAT uses, or the better of the two.

A dense model whose dropped channels carry nothing (zero embedding columns and o/down output rows) has a
residual stream that is exactly 0 there, so cutting those channels must not change it at all; that only
holds when the norm gains are scaled by sqrt(d/d') and eps by d/d' (PAT's fold). Before the fix the
baseline sliced the gains as they were, shrinking every norm output by sqrt(d'/d).
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from sparsetune.methods.base import MethodContext
from sparsetune.methods.pat.baseline import PruneLoRA, PruneLoRAConfig
from sparsetune.methods.pat.merge import base_of
from sparsetune.models.arch import get_arch
from sparsetune.models.tiny import build_tiny

torch.set_num_threads(1)

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0}


def tiny(name: str = "tiny_llama", **overrides):
    spec = yaml.safe_load(open(f"recipes/model/{name}.yaml"))
    torch.manual_seed(0)
    return build_tiny(spec["model_type"], {**spec["config"], **overrides})


@torch.no_grad()
def silence(model, drop: torch.Tensor):
    """Zero every weight that writes to or reads from the channels `drop`: the function is unchanged on the
    kept channels, the dropped ones are 0 in the residual stream, and their magnitude importance is 0."""
    arch = get_arch(model)
    arch.embed.weight[:, drop] = 0
    for b in arch.blocks:
        for lin in (b.attn.q, b.attn.k, b.attn.v, b.mlp.gate, b.mlp.up):
            lin.weight[:, drop] = 0
        for lin in (b.attn.o, b.mlp.down):
            lin.weight[drop] = 0
            if lin.bias is not None:
                lin.bias[drop] = 0
    return model


def batches(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(0, 256, (2, 10), generator=gen)} for _ in range(n)]


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2", "tiny_gemma"])
def test_pruned_baseline_equals_dense_model_when_dropped_channels_are_silent(name):
    model = tiny(name, rms_norm_eps=0.05)  # a large eps: the eps * d/d' correction matters too
    d = get_arch(model).hidden_size
    drop = torch.arange(1, d, 4)  # a quarter of the channels, spread out
    silence(model, drop)
    expect = logits(model)
    method = PruneLoRA(PruneLoRAConfig(prune_ratio=0.25, norm_correction="exact", **LORA))
    pruned = method.apply(model, MethodContext.of(model))
    assert method.keep.numel() == d - drop.numel() and not set(method.keep.tolist()) & set(drop.tolist())
    torch.testing.assert_close(logits(pruned), expect, rtol=1e-5, atol=1e-5)  # LoRA's B = 0: the pruned model itself


def test_norm_correction_modes_set_gains_and_eps():
    model = tiny()
    arch = get_arch(model)
    d, eps = arch.hidden_size, model.config.rms_norm_eps
    out = {}
    for mode in ("exact", "none"):
        method = PruneLoRA(PruneLoRAConfig(prune_ratio=0.25, norm_correction=mode, **LORA))
        pruned = base_of(method.apply(model, MethodContext.of(model)))
        keep, d2 = method.keep, method.n_keep
        factor = math.sqrt(d / d2) if mode == "exact" else 1.0
        torch.testing.assert_close(pruned.model.norm.weight, arch.final_norm.weight[keep] * factor)
        torch.testing.assert_close(pruned.model.layers[1].input_layernorm.weight,
                                   arch.blocks[1].norms[0].weight[keep] * factor)
        assert pruned.config.rms_norm_eps == pytest.approx(eps * (d / d2 if mode == "exact" else 1.0))
        assert method.metrics()["norm_correction_exact"] == (1 if mode == "exact" else 0)
        out[mode] = logits(pruned)
    assert not torch.allclose(out["exact"], out["none"], atol=1e-3)  # the two really differ on a dense model


def test_auto_keeps_the_lower_calibration_loss_and_reports_both():
    from sparsetune.methods.pat.baseline import lm_loss

    model = tiny()
    method = PruneLoRA(PruneLoRAConfig(prune_ratio=0.25, norm_correction="auto", **LORA))
    pruned = base_of(method.apply(model, MethodContext.of(model, calibration_batches=batches)))
    m = method.metrics()
    losses = {mode: m[f"prune_loss_{mode}"] for mode in ("exact", "none")}
    assert losses["exact"] != losses["none"]
    chosen = min(losses, key=losses.get)
    assert m["norm_correction_exact"] == (chosen == "exact")
    # the recorded loss is the kept model's own loss on those batches (LoRA's B = 0)
    assert lm_loss(pruned, batches(4)) == pytest.approx(losses[chosen], rel=1e-5)
    # resuming keeps the choice without re-measuring (no calibration batches needed)
    again = PruneLoRA(PruneLoRAConfig(prune_ratio=0.25, norm_correction="auto", **LORA))
    again.load_state_dict(method.state_dict())
    resumed = base_of(again.apply(tiny(), MethodContext.of(model)))
    torch.testing.assert_close(logits(resumed), logits(pruned))


def test_auto_without_calibration_batches_uses_the_exact_fold():
    model = tiny()
    method = PruneLoRA(PruneLoRAConfig(prune_ratio=0.25, norm_correction="auto", **LORA))
    method.apply(model, MethodContext.of(model))
    m = method.metrics()
    assert m["norm_correction_exact"] == 1 and "prune_loss_exact" not in m


def test_bad_norm_correction_is_a_one_line_error():
    from sparsetune.errors import ConfigError

    with pytest.raises(ConfigError, match="method.norm_correction: 'sqrt' is not valid; valid: exact, none, auto$"):
        PruneLoRA(PruneLoRAConfig(norm_correction="sqrt"))
