"""Full fine-tuning, LoRA and DoRA (PEFT) on several architecture families."""

from __future__ import annotations

import pytest
import torch

from sparsetune.engine.measure import count_parameters
from sparsetune.jobs.config import compose_job as compose
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.models import get_arch, load_model


def build(model: str, method: str, *extra: str):
    cfg = compose([f"model={model}", f"method={method}", *extra])
    base, _ = load_model(cfg.model)
    arch = get_arch(base)
    m = build_method(cfg.method)
    return cfg, m, m.apply(base, MethodContext(arch=arch)), arch


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2", "tiny_gemma"])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_targets_roles_and_trains_only_adapters(model, method):
    cfg, m, peft_model, arch = build(model, method, "method.r=4", "method.target_modules=[q,v,down]")
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    hit = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert hit == {"q_proj", "v_proj", "down_proj"}
    # expected count: r * (in + out) per targeted linear (+ magnitude vector for DoRA)
    b = arch.blocks[0]
    per_block = sum(4 * (lin.in_features + lin.out_features) + (lin.out_features if method == "dora" else 0)
                    for lin in (b.attn.q, b.attn.v, b.mlp.down))
    assert count_parameters(peft_model)[0] == per_block * arch.num_layers


def test_lora_update_changes_output_and_export_reloads(tmp_path):
    from peft import PeftModel

    cfg, m, model, _ = build("tiny_llama", "lora", "method.r=4")
    ids = torch.randint(0, 256, (2, 12))
    before = model(input_ids=ids).logits.detach()
    opt = torch.optim.AdamW(m.parameter_groups(model, 1e-2, 0.0))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    after = model(input_ids=ids).logits.detach()
    assert not torch.allclose(before, after)
    m.export(model, tmp_path / "export")
    fresh, _ = load_model(cfg.model)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "export")
    torch.testing.assert_close(reloaded(input_ids=ids).logits, after, rtol=1e-5, atol=1e-5)


def test_unknown_target_role_is_a_config_error():
    from sparsetune.errors import ConfigError

    with pytest.raises(ConfigError, match="'gate' is not a linear of a vit block; available: q, k, v, o, up, down"):
        build("tiny_vit", "lora", "method.target_modules=[gate]")


def test_full_finetune_trains_everything():
    _, m, model, _ = build("tiny_qwen2", "full")
    trainable, total = count_parameters(model)
    assert trainable == total
