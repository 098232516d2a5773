"""Data for the `forget` job: the task sequence, the realistic data regime (a share or k shots per
class), and the paired retained/forgotten batches each task trains on."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from sparsetune.errors import ConfigError


def task_sequence(forget_cfg, num_classes: int, seed: int) -> list[list[int]]:
    """List of class-id lists, one per forgetting task; classes never repeat and some must remain."""
    explicit = [list(map(int, t)) for t in (forget_cfg.classes or []) if len(t)]
    if explicit and forget_cfg.sequence:
        raise ConfigError("give either --classes / forget.classes or forget.sequence, not both")
    if forget_cfg.sequence:
        m = re.fullmatch(r"random:(\d+)x(\d+)", str(forget_cfg.sequence).strip())
        if not m:
            raise ConfigError(f"forget.sequence: expected 'random:TxK' (T tasks of K classes), got '{forget_cfg.sequence}'")
        t, k = int(m.group(1)), int(m.group(2))
        if t < 1 or k < 1:
            raise ConfigError("forget.sequence: T and K must be at least 1")
        if t * k >= num_classes:
            raise ConfigError(f"forget.sequence={forget_cfg.sequence} forgets {t * k} of {num_classes} classes; "
                              "at least one must be retained")
        order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
        return [sorted(order[i * k:(i + 1) * k]) for i in range(t)]
    if not explicit:
        raise ConfigError("nothing to forget: pass --classes 3,7 (repeat for a sequence) or forget.sequence=random:TxK")
    flat = [c for t in explicit for c in t]
    bad = [c for c in flat if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes: {bad} outside 0..{num_classes - 1}")
    if len(set(flat)) != len(flat):
        raise ConfigError(f"--classes: a class appears twice in {explicit}")
    if len(flat) >= num_classes:
        raise ConfigError(f"--classes forgets all {num_classes} classes; at least one must be retained")
    return explicit


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


def _norm_class(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def class_id(token: str, names: list[str]) -> int:
    """A class id, or a class name matched case-insensitively: the full name, one '/' part of it
    ('top' for 'T-shirt/top'), or a unique prefix ('ankle' for 'Ankle boot'); 'shirt' is Shirt."""
    token = token.strip()
    if token.lstrip("-").isdigit():
        return int(token)
    valid = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    if not names:
        raise ConfigError(f"--classes: '{token}' is not a class id and this data set has no class names; give ids")
    want = _norm_class(token)
    spellings = [[_norm_class(n), *(_norm_class(part) for part in n.split("/"))] for n in names]
    for match in (lambda s: s[0] == want, lambda s: want in s[1:], lambda s: any(x.startswith(want) for x in s)):
        hits = [i for i, s in enumerate(spellings) if want and match(s)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(f"--classes: '{token}' is ambiguous ({', '.join(names[i] for i in hits)}); valid: {valid}")
    raise ConfigError(f"--classes: no class named '{token}'; valid: {valid}")


def resolve_classes(groups: list[str], names: list[str]) -> list[list[int]]:
    """`--classes shirt,coat --classes 1` → [[6, 4], [1]] (ids and names mix)."""
    return [[class_id(c, names) for c in group.split(",") if c.strip()] for group in groups]
