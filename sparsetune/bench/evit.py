"""`sparsetune bench evit`: inference throughput of EViT token reorganisation against the stock model.

Variants `stock` (the unpatched HF model) and `keep_0.9` … `keep_0.5` (EViT at the paper's blocks 4/7/10,
fusing the inattentive tokens) of DeiT-S's shape with random weights (`model=deit_s_shape`: 224 px,
patch 16, dim 384, 12 blocks, 6 heads; speed needs no trained weights), each in its own process,
rounds interleaved. Measured under `torch.inference_mode` on one random batch (64 images; `--quick`: 8):
- `images_per_s`: batch / median forward time after warm-up; `images_per_s_vs_stock` is the speed-up;
- `gmacs`: multiply-accumulates per image, counted analytically (the paper's 4.6 GMACs for stock DeiT-S);
- `tokens`: patch tokens entering the model and leaving each reorganising block;
- `peak_memory_mb` (CUDA: allocated; CPU: process peak RSS while measuring);
- `speedup_same_process` (EViT variants): the same model's stock forward (keep 1.0 runs the stock
  layer code) timed alternately with the EViT forward in the same process, median of the per-pair
  ratios: robust to load on a shared machine, where the cross-process ratio drifts.
No ToMe row: ToMe (facebookresearch/ToMe) is not on PyPI and timm ships no token merging, so no
offline peer installs (`tomesd` patches Stable Diffusion UNets, not ViTs).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from sparsetune.bench.runner import Benchmark, Setting, Variant
from sparsetune.bench.worker import worker_setup
from sparsetune.engine.measure import StepTimer, latency, peak_memory_mb, reset_peak_memory
from sparsetune.methods import build_method
from sparsetune.methods.base import MethodContext
from sparsetune.methods.evit.config import EViTConfig
from sparsetune.models import load_model

MEASURE = "sparsetune.bench.evit:measure_inference"
KEEP_RATES = (0.9, 0.8, 0.7, 0.6, 0.5)


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    common = ["model=deit_s_shape", "data=digits", "logger=quiet", *overrides]
    variants = [Variant("stock", MEASURE, ["method=full", *common])]
    variants += [Variant(f"keep_{k}", MEASURE, ["method=evit", f"method.keep_rate={k}", *common]) for k in KEEP_RATES]
    if quick:
        settings = [Setting("batch 8", {"batch": 8, "warmup": 1, "iters": 2})]
    else:
        settings = [Setting("batch 64", {"batch": 64, "warmup": 1, "iters": 3})]
    return Benchmark(name="evit", variants=variants, settings=settings, baseline="stock",
                     ratio_metrics=["images_per_s", "gmacs", "peak_memory_mb"])


def measure_inference(cfg, settings: dict[str, Any]) -> dict[str, Any]:
    device = worker_setup(cfg, settings)
    model, _ = load_model(cfg.model)
    evit = cfg.method.name == "evit"
    method = build_method(cfg.method if evit else EViTConfig(keep_rate=1.0))
    model = method.apply(model, MethodContext.of(model))
    if not evit:  # the stock model, unpatched; the method only reports its figures (tokens, GMACs)
        method.remove(model)
    model = model.to(device).eval()
    model.requires_grad_(False)
    c = model.config
    batch = int(settings["batch"])
    x = torch.randn(batch, c.num_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=next(model.parameters()).dtype)
    reset_peak_memory(device)
    warmup, iters = int(settings["warmup"]), int(settings["iters"])
    paired: dict[str, Any] = {}
    with torch.inference_mode():
        if not evit:
            t = latency(lambda: model(pixel_values=x), warmup=warmup, iters=iters, device=device)["median"]
        else:  # EViT and, alternating with it in this process, the stock forward (keep 1.0 runs the stock code)
            keep, timers = method.settings.keep_rate, {"evit": StepTimer(device), "stock": StepTimer(device)}
            for _ in range(warmup + iters):
                for name, rate in (("evit", keep), ("stock", 1.0)):
                    method.settings.keep_rate = rate
                    with timers[name].step():
                        model(pixel_values=x)
            method.settings.keep_rate = keep
            ev, st = timers["evit"].measured(warmup), timers["stock"].measured(warmup)
            t = statistics.median(ev)
            paired = {"stock_images_per_s_same_process": batch / statistics.median(st),
                      "speedup_same_process": statistics.median(b / a for a, b in zip(ev, st))}
    return {
        "images_per_s": batch / t,
        "latency_s": t,
        **paired,
        "gmacs": method.gmacs(),
        "tokens": "→".join(str(n) for n in method.tokens()),
        "reorg_layers": ",".join(str(i) for i in method.reorg_layers),
        "peak_memory_mb": peak_memory_mb(device),
        "batch": batch,
        "threads": torch.get_num_threads(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": str(getattr(c, "_attn_implementation", "")),
    }
