"""`sparsetune bench NAME`: each benchmark is a list of variants (Hydra overrides + a measurement),
run one process per variant so peak memory and allocator state never leak between them."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

from sparsetune.bench.runner import run_benchmark

# name -> module defining `variants(quick: bool, overrides: list[str]) -> Benchmark`
BENCHMARKS: dict[str, str] = {
    "eval": "sparsetune.bench.eval",
    "lora": "sparsetune.bench.baselines",
    "s2ft": "sparsetune.bench.s2ft",
    "pat": "sparsetune.bench.pat",
    "evit": "sparsetune.bench.evit",
    "spt": "sparsetune.bench.spt",
    "spt_model": "sparsetune.bench.spt_model",
}


def benchmark_module(name: str):
    from sparsetune.errors import UserError

    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark '{name}'; available: {', '.join(sorted(BENCHMARKS))}")
    return importlib.import_module(BENCHMARKS[name])


def list_benchmarks() -> list[tuple[str, str]]:
    """(name, one-line description) per benchmark, from the first sentence of its module docstring.

    Read from the source without importing it, so `sparsetune bench --list` does not load torch.
    """
    rows = []
    for name, module in sorted(BENCHMARKS.items()):
        spec = importlib.util.find_spec(module)
        doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) if spec and spec.origin else None
        text = " ".join((doc or "").split())
        text = text.split(": ", 1)[1] if text.startswith("`sparsetune bench") and ": " in text else text
        text = text.split(". ")[0].split(" (")[0].rstrip(".;:,")  # the first sentence, no asides
        if len(text) > 100:  # one line: the first sentence, cut at a word
            text = text[:100].rsplit(" ", 1)[0].rstrip(",;:(") + " …"
        rows.append((name, text))
    return rows


__all__ = ["BENCHMARKS", "benchmark_module", "list_benchmarks", "run_benchmark"]
