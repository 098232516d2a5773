"""S²FT adapters: export/load on a fresh base, fuse/unfuse, switching, mixed batches, fusion, merged export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from sparsetune.errors import UserError
from sparsetune.methods.base import MethodContext
from sparsetune.methods.s2ft import S2FT, MixedAdapterModel, S2FTAdapter, S2FTConfig, switch
from sparsetune.models.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[2]
DEVICE = os.environ.get("SPARSETUNE_TEST_DEVICE", "cpu")  # cuda: see scripts/gpu_check.sh


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def tiny(name: str, seed: int = 0):
    spec = yaml.safe_load((ROOT / "recipes" / "model" / f"tiny_{name}.yaml").read_text())
    model = build_tiny(spec["model_type"], spec["config"], seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # HF initialises biases to 0; non-zero ones catch bias-permutation bugs
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.to(DEVICE).eval()


def ids(batch: int = 3, length: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def logits(model, x, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, **kw).logits


def trained(name: str, seed: int, **ratios):
    """A model with S²FT applied and random (as if trained) deltas; returns (model, method)."""
    model = tiny(name)
    method = S2FT(S2FTConfig(seed=seed, **(ratios or {"o_ratio": 0.5, "d_ratio": 0.2})))
    method.apply(model, MethodContext.of(model))
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for m in method.slice_modules(model).values():
            m.delta.copy_(torch.randn(m.delta.shape, generator=gen) * 0.05)
    return model, method


ALL = {"o_ratio": 0.5, "v_ratio": 0.5, "d_ratio": 0.2, "u_ratio": 0.2}  # permuted (v/u rows trained)


@pytest.mark.parametrize("name,ratios", [("llama", {}), ("qwen2", ALL), ("llama", ALL)])
def test_export_load_on_fresh_base_reproduces_logits(tmp_path, name, ratios):
    model, method = trained(name, seed=0, **ratios)
    x = ids()
    want = logits(model, x)
    out = method.export(model, tmp_path / "export")
    adapter = S2FTAdapter.load(out)
    assert adapter.base_model == method.base_model and adapter.fingerprint == method.base_fingerprint
    assert adapter.num_params() == sum(m.delta.numel() for m in method.slice_modules(model).values())
    assert adapter.metadata["selection"] == method.selection.to_dict()
    for fuse in (True, False):
        base = tiny(name)
        adapter.apply_to(base, fuse=fuse)
        torch.testing.assert_close(logits(base, x), want, atol=1e-5, rtol=1e-5)


def test_fused_equals_unfused_and_remove_restores_base():
    model, method = trained("qwen2", seed=1, **ALL)
    adapter = method.to_adapter(model)
    base = tiny("qwen2")
    x = ids()
    stock = {k: v.clone() for k, v in base.state_dict().items()}
    ref = logits(base, x)
    adapter.apply_to(base, fuse=True)
    fused = logits(base, x)
    adapter.remove_from(base)
    assert all(torch.equal(stock[k], v) for k, v in base.state_dict().items())
    adapter.apply_to(base, fuse=False)
    torch.testing.assert_close(logits(base, x), fused, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused, ref, atol=1e-4)
    adapter.remove_from(base)
    torch.testing.assert_close(logits(base, x), ref, atol=0, rtol=0)
    assert all(type(m).__name__ != "S2FTLinear" for m in base.modules())


def test_switch_a_b_a_is_exact():
    model_a, method_a = trained("llama", seed=2)
    model_b, method_b = trained("llama", seed=3)
    A, B = method_a.to_adapter(model_a), method_b.to_adapter(model_b)
    base = tiny("llama")
    stock = {k: v.clone() for k, v in base.state_dict().items()}
    A.apply_to(base)
    first_a = {k: v.clone() for k, v in base.state_dict().items()}
    x = ids()
    la = logits(base, x)
    switch(base, A, B)
    lb = logits(base, x)
    torch.testing.assert_close(lb, logits(model_b, x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(la, lb, atol=1e-4)
    switch(base, B, A)
    assert all(torch.equal(first_a[k], v) for k, v in base.state_dict().items())
    switch(base, A, None)
    assert all(torch.equal(stock[k], v) for k, v in base.state_dict().items())
    with pytest.raises(UserError, match="reverse order"):
        A.remove_from(base)


def test_mixed_adapter_batch_equals_per_row_runs():
    A = trained("qwen2", seed=4, **ALL)
    B = trained("qwen2", seed=5)
    adapters = [m.to_adapter(model) for model, m in (A, B)]
    base = tiny("qwen2")
    mixed = MixedAdapterModel(base, adapters)
    x = ids(batch=4, seed=7)
    adapter_ids = torch.tensor([1, -1, 0, 1])
    got = logits(mixed, x, adapter_ids=adapter_ids)
    for row, a in enumerate(adapter_ids.tolist()):
        if a < 0:
            ref = logits(base, x[row:row + 1])
        else:
            adapters[a].apply_to(base)
            ref = logits(base, x[row:row + 1])
            adapters[a].remove_from(base)
        torch.testing.assert_close(got[row:row + 1], ref, atol=1e-5, rtol=1e-5)
    out = mixed.generate(x, adapter_ids=adapter_ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (4, 11)
    assert mixed.close() is base


def test_combine_is_weighted_sum_on_union():
    (ma, a), (mb, b) = trained("llama", seed=6), trained("llama", seed=7)
    A, B = a.to_adapter(ma), b.to_adapter(mb)
    fused = S2FTAdapter.combine([A, B], weights=[0.5, 2.0])
    base = tiny("llama")
    stock = {n: base.get_submodule(n).weight.detach().clone() for n in fused.slices}
    fused.apply_to(base)
    for n in fused.slices:
        want = stock[n].clone()
        for adapter, w in ((A, 0.5), (B, 2.0)):
            if n in adapter.slices:
                part = adapter.slices[n]
                want.index_add_(part.dim, part.indices.to(want.device), part.delta.to(want.device) * w)
        torch.testing.assert_close(base.get_submodule(n).weight, want, atol=1e-6, rtol=0)
    overlap = [n for n in A.slices if n in B.slices]
    assert overlap and any(len(fused.slices[n].indices) < len(A.slices[n].indices) + len(B.slices[n].indices)
                           for n in overlap)


def test_merged_export_is_unpermuted_w_plus_scattered_delta(tmp_path):
    model, method = trained("qwen2", seed=8, **ALL)
    assert method.permutation
    adapter = method.to_adapter(model)
    stock = tiny("qwen2").state_dict()
    merged = method.merged_state_dict(model)
    for key, value in stock.items():
        want = value.clone()
        name = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and name in adapter.slices:
            s = adapter.slices[name]
            want.index_add_(s.dim, s.indices.to(want.device), s.delta.to(want.device))
        torch.testing.assert_close(merged[key], want, atol=1e-7, rtol=0)
    x = ids()
    want_logits = logits(model, x)
    folder = method.export_merged(model, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(logits(reloaded, x), want_logits, atol=1e-5, rtol=1e-5)
    method.merge_and_unpermute(model)
    assert all(type(m).__name__ != "S2FTLinear" for m in model.modules())
    torch.testing.assert_close(logits(model, x), want_logits, atol=1e-5, rtol=1e-5)


def test_fingerprint_refuses_other_base_and_permuted_model(tmp_path):
    model, method = trained("llama", seed=9, **ALL)
    adapter = S2FTAdapter.load(method.export(model, tmp_path))
    with pytest.raises(UserError, match="fingerprint"):
        adapter.apply_to(tiny("llama", seed=1))
    with pytest.raises(UserError, match="fingerprint"):
        adapter.apply_to(_permuted_llama())  # a co-permuted base would silently misplace the slices
    adapter.apply_to(tiny("llama").to(torch.bfloat16))  # same checkpoint in another dtype is fine
    with pytest.raises(UserError, match="not a sparsetune"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        S2FTAdapter.load(tmp_path / "other.safetensors")


def _permuted_llama():
    model = tiny("llama")
    S2FT(S2FTConfig(**ALL)).apply(model, MethodContext.of(model))
    for n, m in list(model.named_modules()):
        if type(m).__name__ == "S2FTLinear":
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent), child, m.unwrap())
    return model
