"""The task sequence: explicit class lists (`--classes`, repeatable) or `forget.sequence=random:TxK`."""

from __future__ import annotations

import re

import torch

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
