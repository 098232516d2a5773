"""The benchmarks `sparsetune bench` knows: name -> "module" (its `benchmark` function) or
"module:function", a function `(quick, overrides) -> Benchmark`. Imported on use, so listing them
(`sparsetune bench --list`) reads descriptions from the source and never loads torch."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from sparsetune.errors import UserError

BENCHMARKS: dict[str, str] = {
    "eval": "sparsetune.bench.eval",
    "lora": "sparsetune.bench.baselines",
    "s2ft": "sparsetune.bench.s2ft",
    "pat": "sparsetune.bench.pat",
    "evit": "sparsetune.bench.evit",
    "spt": "sparsetune.bench.spt",
    "spt_model": "sparsetune.bench.spt:model_benchmark",
    "precision": "sparsetune.bench.precision",
}


def _entry(name: str) -> tuple[str, str]:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark '{name}'; available: {', '.join(sorted(BENCHMARKS))}")
    module, _, function = BENCHMARKS[name].partition(":")
    return module, function or "benchmark"


def build_benchmark(name: str, quick: bool, overrides: list[str]) -> Any:
    """The `Benchmark` (variants, settings, baseline) of benchmark `name`."""
    module, function = _entry(name)
    return getattr(importlib.import_module(module), function)(quick=quick, overrides=list(overrides))


def _description(doc: str | None) -> str:
    """The first sentence of a docstring, on one line, without the `sparsetune bench NAME:` lead."""
    text = " ".join((doc or "").split())
    text = text.split(": ", 1)[1] if text.startswith("`sparsetune bench") and ": " in text else text
    text = text.split(". ")[0].split(" (")[0].rstrip(".;:,")
    if len(text) > 100:  # one line: the first sentence, cut at a word
        text = text[:100].rsplit(" ", 1)[0].rstrip(",;:(") + " …"
    return text


def list_benchmarks() -> list[tuple[str, str]]:
    """(name, one-line description) per benchmark, from its module's (or function's) docstring."""
    rows = []
    for name in sorted(BENCHMARKS):
        module, function = _entry(name)
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text()) if spec and spec.origin else None
        doc = None
        if tree is not None and function != "benchmark":
            node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
            doc = ast.get_docstring(node) if node else None
        elif tree is not None:
            doc = ast.get_docstring(tree)
        rows.append((name, _description(doc)))
    return rows
