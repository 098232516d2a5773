"""Text data sources: each turns a DataConfig into text Splits (see split.py for the split rules)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sparsetune.data.types import Splits
from sparsetune.errors import ConfigError

# source name -> "module:function", imported on use so a source's dependencies load only when chosen
TEXT_SOURCES = {
    "benchmarks": "sparsetune.data.sources.benchmarks:load_benchmarks",
    "jsonl": "sparsetune.data.sources.jsonl:load_jsonl",
    "hub": "sparsetune.data.sources.hub:load_hub",
    "gsm_symbolic": "sparsetune.data.sources.gsm:load_gsm_symbolic",
    "bigbench": "sparsetune.data.sources.bigbench:load_bigbench",
    "synthetic": "sparsetune.data.sources.synthetic:load_synthetic",
}


def text_loader(source: str) -> Callable[[Any], Splits]:
    if source not in TEXT_SOURCES:
        raise ConfigError(f"unknown text data source '{source}'; available: {', '.join(TEXT_SOURCES)}")
    module, func = TEXT_SOURCES[source].split(":")
    return getattr(importlib.import_module(module), func)
