"""`sparsetune bench spt_model`: SPT vs LoRA on the whole SmolLM2-135M (its shape) at S = 1024: step time,
peak memory and saved activations, each variant in its own process (see sparsetune.bench.spt)."""

from __future__ import annotations

from sparsetune.bench.runner import Benchmark
from sparsetune.bench.spt import model_benchmark


def benchmark(quick: bool, overrides: list[str]) -> Benchmark:
    return model_benchmark(quick, overrides)
