"""`sparsetune bench NAME`: each benchmark is a list of variants (Hydra overrides + a measurement),
run one process per variant so peak memory and allocator state never leak between them."""

from __future__ import annotations

import importlib

from sparsetune.bench.runner import run_benchmark

# name -> module defining `variants(quick: bool, overrides: list[str]) -> Benchmark`
BENCHMARKS: dict[str, str] = {
    "lora": "sparsetune.bench.baselines",
    "s2ft": "sparsetune.bench.s2ft",
    "pat": "sparsetune.bench.pat",
}


def benchmark_module(name: str):
    from sparsetune.errors import UserError

    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark '{name}'; available: {', '.join(sorted(BENCHMARKS))}")
    return importlib.import_module(BENCHMARKS[name])


__all__ = ["BENCHMARKS", "benchmark_module", "run_benchmark"]
