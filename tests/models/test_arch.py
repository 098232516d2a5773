"""The architecture adapter finds the right modules and geometry on each supported family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sparsetune.errors import UnsupportedModelError
from sparsetune.models.arch import get_arch
from sparsetune.models.tiny import build_tiny

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "model"


def tiny(name: str):
    spec = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    return build_tiny(spec["model_type"], spec["config"], spec["task"])


def test_llama_gqa_tied():
    model = tiny("tiny_llama")
    arch = get_arch(model)
    assert (arch.family, arch.kind) == ("llama", "decoder")
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim) == (4, 2, 16)
    assert arch.tied_embeddings and arch.head.weight is arch.embed.weight
    b = arch.blocks[1]
    assert b.attn.q is model.model.layers[1].self_attn.q_proj
    assert b.attn.k.out_features == 2 * 16 and b.attn.q.out_features == 4 * 16
    assert b.attn.group_size == 2
    assert b.mlp.gate is model.model.layers[1].mlp.gate_proj and b.mlp.intermediate_size == 128
    assert b.norms == [model.model.layers[1].input_layernorm, model.model.layers[1].post_attention_layernorm]
    assert arch.final_norm is model.model.norm and arch.norm_kind == "rms"
    assert arch.linear_names()["down"] == "mlp.down_proj"
    assert arch.name_of(b.attn.o) == "model.layers.1.self_attn.o_proj"


def test_qwen2_biases_and_explicit_head_dim():
    model = tiny("tiny_qwen2")
    arch = get_arch(model)
    assert arch.family == "qwen2"
    # head_dim is read from the config (24), not derived as hidden/heads (16)
    assert arch.head_dim == 24 and arch.hidden_size // arch.num_heads == 16
    b = arch.blocks[0]
    assert b.attn.q.out_features == 4 * 24 and b.attn.o.in_features == 4 * 24
    assert b.attn.q.bias is not None and b.attn.k.bias is not None and b.attn.v.bias is not None
    assert b.attn.o.bias is None
    assert not arch.tied_embeddings and arch.head is model.lm_head


def test_gemma_norm_and_embed_scale():
    arch = get_arch(tiny("tiny_gemma"))
    assert arch.family == "gemma" and arch.norm_kind == "rms_plus_one"
    assert arch.embed_scale == pytest.approx(64 ** 0.5)
    assert arch.num_kv_heads == 1 and arch.head_dim == 32 and arch.tied_embeddings


@pytest.mark.parametrize("name,family", [("tiny_vit", "vit"), ("tiny_deit", "deit")])
def test_vision_encoders(name, family):
    model = tiny(name)
    arch = get_arch(model)
    assert (arch.family, arch.kind) == (family, "encoder")
    assert arch.num_layers == 2 and arch.num_heads == arch.num_kv_heads == 4 and arch.head_dim == 8
    layer = getattr(model, family).layers[0]
    b = arch.blocks[0]
    assert b.attn.q is layer.attention.q_proj and b.attn.o is layer.attention.o_proj
    assert b.mlp.up is layer.mlp.fc1 and b.mlp.down is layer.mlp.fc2 and b.mlp.gate is None
    assert b.norms == [layer.layernorm_before, layer.layernorm_after]
    assert arch.head.out_features == 10 and arch.norm_kind == "layer"
    out = model(pixel_values=torch.randn(2, 1, 28, 28)).logits
    assert out.shape == (2, 10)


def test_unsupported_model_names_supported_families():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="supported families: .*llama.*qwen2.*vit"):
        get_arch(model)
