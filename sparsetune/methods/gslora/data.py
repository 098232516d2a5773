"""The realistic data regime and the paired retained/forgotten batches each task trains on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from sparsetune.errors import ConfigError


def available(dataset, ratio: float, shots: int | None, seed: int):
    """The share of `dataset` a forgetting run may use: `shots` images per class, else a stratified
    `ratio` of each class (seeded; at least one image per class present)."""
    if shots is None and not 0 < ratio <= 1:
        raise ConfigError(f"forget.data_ratio must be in (0, 1], got {ratio}")
    if shots is not None and shots < 1:
        raise ConfigError(f"forget.shots must be at least 1, got {shots}")
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(dataset.targets).tolist():
        rows = torch.nonzero(dataset.targets == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        n = shots if shots is not None else max(1, round(ratio * len(rows)))
        keep.append(rows[:n])
    return dataset.subset(torch.sort(torch.cat(keep)).values)


class ForgetPairs(Dataset):
    """Item i = (retained image i, forgotten image i mod n_f): every batch carries both halves."""

    def __init__(self, retained, forgotten):
        if len(retained) == 0:
            raise ConfigError("no retained training images are available (raise forget.data_ratio / forget.shots)")
        self.retained, self.forgotten = retained, forgotten

    def __len__(self) -> int:
        return max(len(self.retained), len(self.forgotten) if self.forgotten is not None else 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.retained[i % len(self.retained)])
        if self.forgotten is not None and len(self.forgotten):
            f = self.forgotten[i % len(self.forgotten)]
            item["forget_pixel_values"], item["forget_labels"] = f["pixel_values"], f["labels"]
        return item


def collate_pairs(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """`pixel_values`/`labels` (retained; the engine's loss and normaliser read these) plus
    `forget_pixel_values`/`forget_labels` for the forgetting terms."""
    batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
             "labels": torch.tensor([int(it["labels"]) for it in items], dtype=torch.long)}
    if "forget_pixel_values" in items[0]:
        batch["forget_pixel_values"] = torch.stack([it["forget_pixel_values"] for it in items])
        batch["forget_labels"] = torch.tensor([int(it["forget_labels"]) for it in items], dtype=torch.long)
    return batch
