"""Data entry points for the trainer and evaluator: `load_splits` and `build_train_dataset`.

Heavy modules (torch, datasets, reasoning-gym, the vision readers) are imported on use, so the CLI
can import this package cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError

__all__ = ["Example", "Splits", "load_splits", "build_train_dataset", "collate_vision"]


def load_splits(data_cfg: Any) -> Splits:
    """Train / val / test parts for `data_cfg` (a DataConfig or a DictConfig with its fields)."""
    kind = data_cfg.kind
    if kind == "vision":
        from sparsetune.data.vision import load_vision_splits

        return load_vision_splits(data_cfg)
    if kind != "text":
        raise ConfigError(f"unknown data.kind '{kind}'; use text or vision")
    from sparsetune.data.sources import text_loader

    return text_loader(data_cfg.source)(data_cfg)


def collate_vision(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack `{"pixel_values": [C,H,W], "labels": int}` items into a batch."""
    import torch

    return {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "labels": torch.tensor([int(it["labels"]) for it in items], dtype=torch.long)}


def build_train_dataset(splits: Splits, tokenizer: Any, data_cfg: Any) -> tuple[Any, Callable]:
    """(dataset, collate_fn) for the training part: tokenised text, or the vision dataset as is."""
    if splits.kind == "vision":
        return splits.train, collate_vision
    from functools import partial

    from sparsetune.data.text import TextDataset, collate_text, pad_token_id

    if tokenizer is None:
        raise ConfigError("text data needs a tokenizer (the model has none)")
    dataset = TextDataset(splits.train, tokenizer, data_cfg.max_length, data_cfg.prompt_template)
    return dataset, partial(collate_text, pad_id=pad_token_id(tokenizer))
