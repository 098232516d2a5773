"""`sparsetune bench NAME`: each benchmark is a list of variants (Hydra overrides + a measurement),
run one process per variant so peak memory and allocator state never leak between them
(`runner.run_benchmark`); `registry.py` names them."""

from __future__ import annotations

from sparsetune.bench.registry import BENCHMARKS, build_benchmark, list_benchmarks
from sparsetune.bench.runner import run_benchmark

__all__ = ["BENCHMARKS", "build_benchmark", "list_benchmarks", "run_benchmark"]
