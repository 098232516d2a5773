"""Lean gated MLPs: same outputs and gradients as the stock modules, fewer bytes kept for backward."""

from pathlib import Path

import pytest
import torch
import yaml

from sparsetune.engine.lean_mlp import make_mlps_lean
from sparsetune.models.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[2]


def tiny(name: str):
    spec = yaml.safe_load((ROOT / "recipes" / "model" / f"tiny_{name}.yaml").read_text())
    return build_tiny(spec["model_type"], spec["config"], seed=0).train()


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward while building the graph of fn()."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])  # SwiGLU, SwiGLU + biases, GeGLU
def test_same_loss_and_grads_less_saved(name):
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    runs = []
    for lean in (False, True):
        model = tiny(name)
        if lean:
            assert make_mlps_lean(model) == model.config.num_hidden_layers
        nbytes, loss = saved_bytes(lambda m=model: m(input_ids=x, labels=x).loss)
        loss.backward()
        runs.append((nbytes, loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (b0, l0, g0), (b1, l1, g1) = runs
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)
    # exactly one (batch, seq, intermediate) fp32 tensor per layer is no longer kept
    config = tiny(name).config
    assert b0 - b1 == x.numel() * config.intermediate_size * 4 * config.num_hidden_layers


def test_idempotent_and_frozen_inputs_need_no_graph():
    model = tiny("llama")
    assert make_mlps_lean(model) == 2 and make_mlps_lean(model) == 0
    model.requires_grad_(False)
    x = torch.randint(0, 256, (1, 5))
    nbytes, out = saved_bytes(lambda: model(input_ids=x).logits)
    assert nbytes == 0 and not out.requires_grad
