"""`sparsetune bench s2ft`: S²FT vs full fine-tuning vs PEFT LoRA at equal trainable parameters
(training steps; `s2ft_gc`: S²FT with gradient checkpointing, compared with `s2ft`), plus adapter switching and mixed-adapter batched inference (serving)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from sparsetune.bench.runner import Benchmark, Setting, Variant
from sparsetune.engine.measure import latency
from sparsetune.engine.runtime import quiet_libraries, resolve_device
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.methods.lora import resolve_targets
from sparsetune.methods.s2ft import MixedAdapterModel, switch
from sparsetune.models import get_arch, load_model

STEP = "sparsetune.bench.training_step:measure_train_step"
RANK = 16  # LoRA rank; S²FT gets exactly LoRA-r16's parameter count on the same modules (4 with --quick)
LORA_TARGETS = "[q,k,v,up,down]"
TOP_FRACTION = 0.34  # s2ft_top: trained units only in the top third of the blocks


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    model = ["model=tiny_llama"] if quick else []
    common = [*model, "logger=quiet", *overrides]
    rank = 4 if quick else RANK
    s2ft = ["method=s2ft", f"method.match_lora_rank={rank}", f"method.match_lora_modules={LORA_TARGETS}"]
    lora = ["method=lora", f"method.r={rank}", f"method.target_modules={LORA_TARGETS}"]
    if quick:
        settings = [Setting("4x128", {"batch": 4, "seq": 128, "warmup": 1, "steps": 3})]
    else:
        settings = [Setting("4x256", {"batch": 4, "seq": 256, "warmup": 2, "steps": 5}),
                    Setting("1x512", {"batch": 1, "seq": 512, "warmup": 2, "steps": 5})]
    serving = Setting("serving", {"batch": 4, "seq": 64 if quick else 128, "warmup": 2, "steps": 5 if quick else 10,
                                  "serving": True})
    return Benchmark(
        name="s2ft",
        variants=[Variant("full", STEP, ["method=full", *common]),
                  Variant("lora", STEP, [*lora, *common]),
                  Variant("s2ft", STEP, [*s2ft, *common]),
                  # the same budget in the top third of the blocks: backward stops below them (not the paper)
                  Variant("s2ft_top", STEP, [*s2ft, f"method.top_fraction={TOP_FRACTION}", *common]),
                  # S²FT with every block checkpointed (recomputed in backward): lower peak memory, more time
                  Variant("s2ft_gc", STEP, [*s2ft, "trainer.gradient_checkpointing=true", *common])],
        settings=settings,
        baseline="full",
        ratio_metrics=["step_time_s", "peak_memory_mb"],
        extra_ratios=[("s2ft", "lora"), ("s2ft_top", "lora"), ("s2ft_gc", "s2ft")],
        extra_blocks=[(serving, [Variant("lora", "sparsetune.bench.s2ft:measure_lora_serving", [*lora, *common]),
                                 Variant("s2ft", "sparsetune.bench.s2ft:measure_s2ft_serving", [*s2ft, *common])],
                       "lora", ["switch_time_s", "mixed_batch_latency_s"])],
    )


def _randomise(tensors, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=gen) * scale)


def _inputs(model, settings: dict[str, Any]) -> torch.Tensor:
    vocab = model.config.get_text_config().vocab_size
    return torch.randint(0, vocab, (settings["batch"], settings["seq"]), generator=torch.Generator().manual_seed(0))


def measure_s2ft_serving(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    """Switch time between two S²FT adapters (in place, slices only) and a batch whose rows use
    different adapters (MixedAdapterModel), on a stock base."""
    quiet_libraries()
    device = resolve_device(cfg.trainer.device)
    base, _ = load_model(cfg.model)
    base = base.to(device)
    trained = build_method(cfg.method)
    clone = copy.deepcopy(base)
    wrapped = trained.apply(clone, MethodContext.of(clone))
    adapters = []
    for seed in (1, 2):
        _randomise([m.delta for m in trained.slice_modules(wrapped).values()], 1e-3, seed)
        adapters.append(trained.to_adapter(wrapped))
    del wrapped
    base.eval()
    a, b = adapters
    a.apply_to(base, fuse=True)
    state = {"current": a}

    def flip():
        new = b if state["current"] is a else a
        switch(base, state["current"], new)
        state["current"] = new

    switch_stats = latency(flip, warmup=settings["warmup"], iters=settings["steps"] * 2, device=device)
    switch(base, state["current"], None)
    ids = _inputs(base, settings).to(device)
    rows = (torch.arange(ids.shape[0]) % 2).to(device)
    mixed = MixedAdapterModel(base, adapters)
    with torch.inference_mode():
        mixed_stats = latency(lambda: mixed(input_ids=ids, adapter_ids=rows), settings["warmup"], settings["steps"], device=device)
        base_stats = latency(lambda: base(input_ids=ids), settings["warmup"], settings["steps"], device=device)
    return {"switch_time_s": switch_stats["median"], "mixed_batch_latency_s": mixed_stats["median"],
            "base_latency_s": base_stats["median"], "adapter_params": a.num_params()}


def measure_lora_serving(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    """PEFT LoRA: switching = unmerge A + merge B; mixed batch = forward(adapter_names=[...])."""
    quiet_libraries()
    device = resolve_device(cfg.trainer.device)
    base, _ = load_model(cfg.model)
    base = base.to(device)
    arch = get_arch(base)
    lcfg = LoraConfig(r=cfg.method.r, lora_alpha=cfg.method.alpha,
                      target_modules=resolve_targets(arch, list(cfg.method.target_modules)))
    model = get_peft_model(base, lcfg, adapter_name="a")
    model.add_adapter("b", lcfg)
    _randomise([p for n, p in model.named_parameters() if "lora_B" in n], 1e-3, 3)
    model.eval()
    model.set_adapter("a")
    model.merge_adapter()
    state = {"current": "a"}

    def flip():
        new = "b" if state["current"] == "a" else "a"
        model.unmerge_adapter()
        model.set_adapter(new)
        model.merge_adapter()
        state["current"] = new

    switch_stats = latency(flip, warmup=settings["warmup"], iters=settings["steps"] * 2, device=device)
    model.unmerge_adapter()
    ids = _inputs(base, settings).to(device)
    names = ["a" if i % 2 == 0 else "b" for i in range(ids.shape[0])]
    with torch.inference_mode():
        mixed_stats = latency(lambda: model(input_ids=ids, adapter_names=names), settings["warmup"], settings["steps"], device=device)
    return {"switch_time_s": switch_stats["median"], "mixed_batch_latency_s": mixed_stats["median"]}
