"""Hugging Face Hub data sets (`datasets.load_dataset`), for users who are online.

Rows are read with the same field rules as local files (see jsonl.py), then split by `split_seed`.
Offline, or for an unknown id, the error says so and points at the data sets that work offline.
"""

from __future__ import annotations

from typing import Any

from sparsetune.data.sources.jsonl import example_from_row
from sparsetune.data.sources.split import make_splits
from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError, DataError

OFFLINE_HINT = ("use an offline data set instead: data=commonsense_mix, data=gsm_symbolic, "
                "data=synthetic_arith, or data=jsonl data.path=FILE")


def load_hub(data_cfg: Any) -> Splits:
    hub_id = data_cfg.hub_id
    if not hub_id:
        raise ConfigError("data.hub_id is required for source=hub (e.g. yahma/alpaca-cleaned)")
    try:
        import datasets
    except ImportError:
        raise DataError("source=hub needs the `datasets` package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(hub_id, data_cfg.hub_config, split=data_cfg.hub_split)
    except Exception as exc:  # offline, unknown id, bad config/split: datasets raises many types
        reason = " ".join(str(exc).split())[:200]
        raise DataError(f"cannot load '{hub_id}' from the Hugging Face Hub (unreachable or unknown: "
                        f"{type(exc).__name__}: {reason}); {OFFLINE_HINT}") from None
    task = data_cfg.name or hub_id.split("/")[-1]
    where = f"{hub_id}[{data_cfg.hub_split}]"
    examples: list[Example] = [
        example_from_row(dict(row), data_cfg, task, f"{where} row {i}") for i, row in enumerate(rows)
    ]
    if not examples:
        raise DataError(f"{where}: no rows")
    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, []).append(ex)
    return make_splits(by_task, data_cfg)
