"""PAT pieces: mask schedule and losses, kept-channel sizing, HSM identity init, identity loss, state."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from sparsetune.errors import ConfigError, UnsupportedModelError
from sparsetune.methods.base import MethodContext
from sparsetune.methods.pat import PAT, PATConfig, SharedMask, beta_at, tau_at
from sparsetune.methods.pat.channels import kept_count
from sparsetune.methods.pat.merge import config_accepts
from sparsetune.models.arch import get_arch
from sparsetune.models.tiny import build_tiny

torch.set_num_threads(1)


def tiny(name: str, **overrides):
    spec = yaml.safe_load(open(f"recipes/model/{name}.yaml"))
    return build_tiny(spec["model_type"], {**spec["config"], **overrides})


def with_pat(name: str, **cfg):
    model = tiny(name)
    pat = PAT(PATConfig(**{"rank": 8, "r": 4, **cfg}))
    return pat, pat.apply(model, MethodContext.of(model))


# ---------------------------------------------------------------------------------------------- schedule
def test_schedule_matches_hand_computation():
    t0 = 10.0  # 30 steps x 1/3
    assert tau_at(0, t0, 100) == 0.0 and beta_at(0, t0) == 0.5
    assert tau_at(1, t0, 100) == pytest.approx(1.0) and beta_at(1, t0) == pytest.approx(0.4)
    assert tau_at(5, t0, 100) == pytest.approx(1 / (1 - math.log(5) / math.log(10)))  # 3.3219
    assert tau_at(5, t0, 100) == pytest.approx(3.32193, rel=1e-5) and beta_at(5, t0) == 0.0
    assert tau_at(9, t0, 100) == pytest.approx(21.8543, rel=1e-4)
    assert tau_at(9, t0, 5.0) == 5.0  # capped
    assert tau_at(10, t0, 100) == 100.0 and tau_at(25, t0, 100) == 100.0  # no sign flip past t0


def test_gate_is_exactly_one_at_start_then_soft_then_hard_top_n():
    mask = SharedMask(8, 3, tau_max=100.0)
    assert torch.equal(mask.gate(), torch.ones(8))  # sigmoid(0) + 0.5
    with torch.no_grad():
        mask.m.copy_(torch.tensor([0.3, -0.2, 0.3, 0.1, -0.4, 0.9, 0.0, 0.3]))
    mask.set_step(1, 30, 1 / 3)
    torch.testing.assert_close(mask.gate(), torch.sigmoid(mask.m) + 0.4)
    # eval mode: exactly N channels, largest m, ties to the lower index (0.9, then 0.3 at 0 and 2)
    mask.eval()
    assert torch.equal(mask.gate(), torch.tensor([1.0, 0, 1, 0, 0, 1, 0, 0]))
    mask.train()
    mask.set_step(10, 30, 1 / 3)  # t0 reached: hard phase, selection frozen
    assert mask.hard and mask.keep.tolist() == [0, 2, 5]
    with torch.no_grad():
        mask.m.copy_(torch.linspace(-1, 1, 8))
    assert torch.equal(mask.gate(), torch.tensor([1.0, 0, 1, 0, 0, 1, 0, 0]))


def test_count_loss_ste_gradient_and_polarization_without_nan():
    mask = SharedMask(10, 4)
    loss = mask.count_loss()  # all m = 0 count as open: |10 - 4| / 4
    assert float(loss.detach()) == pytest.approx(1.5)
    loss.backward()
    assert torch.allclose(mask.m.grad, torch.full((10,), 0.25))  # straight-through: d|c - N|/N / dm_i
    with torch.no_grad():
        mask.m.fill_(-0.1)  # every channel closed: the reference's mean over an empty set would be NaN
    pol = mask.polarization_loss()
    assert torch.isfinite(pol) and float(pol.detach()) == pytest.approx(0.16)


# ---------------------------------------------------------------------------------------------- sizing
def test_kept_channels_exact_and_rounded():
    llama, qwen = tiny("tiny_llama"), tiny("tiny_qwen2")  # d = 64, 4 heads
    # 0.3 -> 45: Qwen2 accepts any width with an explicit head_dim; Llama insists on a multiple of the heads
    assert PAT(PATConfig(prune_ratio=0.3)).kept_channels(get_arch(qwen)) == 45
    assert PAT(PATConfig(prune_ratio=0.3)).kept_channels(get_arch(llama)) == 44
    assert PAT(PATConfig(prune_ratio=0.3, align_heads=True)).kept_channels(get_arch(qwen)) == 44
    assert PAT(PATConfig(prune_ratio=0.3, round_to=8)).kept_channels(get_arch(qwen)) == 48
    assert PAT(PATConfig(prune_ratio=0.25)).kept_channels(get_arch(llama)) == 48
    with pytest.raises(ConfigError, match="keeps all 64"):
        PAT(PATConfig(prune_ratio=0.1, round_to=64)).kept_channels(get_arch(qwen))


def test_smollm2_geometry_keeps_432_channels():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                      num_hidden_layers=1, vocab_size=64)
    assert kept_count(576, 0.25) == 432 and config_accepts(cfg, 432, 64)
    assert not config_accepts(cfg, 430, 64)  # transformers validates hidden % heads even with head_dim set
    assert kept_count(576, 0.25, 72) == 432  # round_to=8 with the 9-head constraint: lcm = 72


def test_bad_config_values_are_config_errors():
    for kwargs, key in (({"hsm": "sparse"}, "method.hsm"), ({"prune_ratio": 1.0}, "method.prune_ratio"),
                        ({"rank": "big"}, "method.rank"), ({"base": "adapter"}, "method.base")):
        with pytest.raises(ConfigError, match=key):
            PAT(PATConfig(**kwargs))


def test_sandwich_norm_models_are_rejected():
    model = build_tiny("gemma2", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                                  "vocab_size": 300})
    with pytest.raises(UnsupportedModelError, match="supported: llama, mistral, qwen2, qwen3, gemma"):
        PAT(PATConfig(rank=4)).apply(model, MethodContext.of(model))


def test_recipe_composes():
    from sparsetune.jobs.config import compose_job as compose

    cfg = compose(["model=tiny_llama", "method=pat", "method.prune_ratio=0.5"])
    assert cfg.method.name == "pat" and cfg.method.prune_ratio == 0.5 and cfg.method.rank == "auto"
    assert list(cfg.method.target_modules) == ["q", "k", "v", "o", "gate", "up", "down"]


# ---------------------------------------------------------------------------------------------- modules
@pytest.mark.parametrize("name,cfg", [("tiny_llama", {}), ("tiny_qwen2", {"hsm": "dense", "base": "dora"}),
                                      ("tiny_gemma", {"embed_hsm": "full"}), ("tiny_mistral", {"base": "full"})])
def test_wrapped_model_equals_stock_model_at_init(name, cfg):
    ids = torch.randint(0, 256, (2, 11))
    ref = tiny(name)(input_ids=ids).logits
    pat, model = with_pat(name, **cfg)
    model.train()  # t = 0: M = sigmoid(0) + 0.5 = 1 exactly, L1 = 0 (D = I), s = 1, LoRA B = 0
    assert len(pat.writes) == 2 * 2 + 1
    assert torch.equal(model(input_ids=ids).logits, ref)


@pytest.mark.parametrize("name,cfg,n_matrix", [("tiny_qwen2", {}, 5), ("tiny_llama", {"embed_hsm": "full"}, 5),
                                               ("tiny_llama", {}, 4)])
def test_identity_loss_covers_every_hsm(name, cfg, n_matrix):
    pat, model = with_pat(name, **cfg)
    writes = [w for w in pat.writes if w.hsm.has_matrix]
    assert len(writes) == n_matrix  # 2L+1, or 2L when the tied embedding keeps a diagonal HSM
    base = float(pat.identity_loss().detach())
    for w in writes:
        with torch.no_grad():
            w.hsm.L0.mul_(3.0)
        assert float(pat.identity_loss().detach()) != pytest.approx(base, rel=1e-6), w.role
        with torch.no_grad():
            w.hsm.L0.div_(3.0)
    # both terms: L1 = 0 gives ||-I||^2 / r^2 = 1 / r per HSM on top of the L0 term
    l0_only = sum(float(((w.hsm.L0 @ w.hsm.L0.T - torch.eye(8)) ** 2).mean().detach()) for w in writes)
    assert base == pytest.approx(l0_only + n_matrix / 8, rel=1e-5)
    losses = pat.extra_loss(model, {}, None)
    assert set(losses) == {"mask", "identity"} and float(losses["identity"].detach()) == pytest.approx(base)
    pat.cfg.identity_terms = "l0"  # the reference's single term
    assert float(pat.identity_loss().detach()) == pytest.approx(l0_only, rel=1e-5)


def test_parameter_groups_and_trainable_state():
    pat, model = with_pat("tiny_llama", mask_lr=0.5)
    groups = pat.parameter_groups(model, 1e-3, 0.01)
    assert [g["lr"] for g in groups] == [1e-3, 1e-3, 0.5]
    assert groups[2]["params"] == [pat.mask.m] and groups[2]["weight_decay"] == 0.0
    assert len(groups[1]["params"]) == 5  # one scale per HSM
    trainable = pat.trainable_state_dict(model)
    assert sum("lora_" in n for n in trainable) == 2 * 7 * 2  # A and B on 7 linears x 2 layers
    assert sum(".hsm." in n for n in trainable) == 4 * 3 + 1  # L0, L1, s on 4 block HSMs + diag embed s
    assert sum(n.endswith("pat_mask.m") for n in trainable) == 1


def test_state_round_trip_restores_the_hard_selection():
    pat, model = with_pat("tiny_llama")
    with torch.no_grad():
        pat.mask.m.copy_(torch.randn(64))
    pat.on_step(4, 12)  # t0 = 4: hard phase starts now
    state = pat.state_dict()
    assert len(state["keep"]) == 48
    other = PAT(PATConfig(rank=8, r=4))
    other.load_state_dict(state)  # before apply(), as the engine does on resume
    model2 = tiny("tiny_llama")
    other.apply(model2, MethodContext.of(model2))
    assert other.mask.hard and other.keep_index().tolist() == state["keep"]
    assert other.metrics()["pat_tau"] == 100.0


def test_frozen_mask_keeps_magnitude_top_n_and_fades_the_rest():
    from sparsetune.methods.pat import hidden_importance, top_channels

    model = tiny("tiny_qwen2")
    expect = top_channels(hidden_importance(model, get_arch(model)), 48)
    pat = PAT(PATConfig(rank=8, r=4, freeze_mask=True))
    model = pat.apply(model, MethodContext.of(model))
    assert not pat.mask.m.requires_grad and torch.equal(pat.keep_index(), expect)
    pat.on_step(2, 12)  # t0 = 4
    gate = pat.mask.gate()
    pruned = torch.ones(64, dtype=torch.bool)
    pruned[expect] = False
    assert torch.all(gate[~pruned] == 1) and torch.allclose(gate[pruned], torch.tensor(math.exp(-2.77 * 2 / 4)))
    assert float(pat.extra_loss(model, {}, None)["mask"]) == 0.0
