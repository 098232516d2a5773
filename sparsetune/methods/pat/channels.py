"""How many hidden channels PAT keeps: one rule for PAT, the prune-then-finetune baseline and
`sparsetune bench pat`, so all three keep the same number (rounded, and aligned to the head count
where transformers requires it)."""

from __future__ import annotations

import math
from typing import Any

from sparsetune.errors import ConfigError

from .merge import config_accepts


def kept_count(hidden: int, prune_ratio: float, multiple: int = 1) -> int:
    """N = round((1 - ratio) * d), then to the nearest multiple of `multiple` (at least one multiple)."""
    n0 = round((1.0 - float(prune_ratio)) * hidden)
    n = max(multiple, int(round(n0 / multiple)) * multiple)
    if n >= hidden:
        raise ConfigError(f"method.prune_ratio={prune_ratio} with channels rounded to a multiple of {multiple} "
                          f"keeps all {hidden} hidden channels; lower method.round_to or raise the ratio")
    return n


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def kept_channels_for(arch, prune_ratio: float, round_to: int = 1, align_heads: Any = "auto") -> int:
    """N for a model: round((1 - ratio) d) to `round_to`, and to the head count when transformers requires it.

    One rule for PAT, the prune-then-finetune baseline and `sparsetune bench pat`, so all three keep the
    same number of channels.
    """
    d, multiple = arch.hidden_size, int(round_to)
    n = kept_count(d, prune_ratio, multiple)
    config = arch.model.config
    if align_heads is True or (align_heads == "auto" and not config_accepts(config, n, arch.head_dim)):
        multiple = lcm(multiple, arch.num_heads)
        n = kept_count(d, prune_ratio, multiple)
    if not config_accepts(config, n, arch.head_dim):
        raise ConfigError(f"method.prune_ratio={prune_ratio}: transformers rejects hidden_size={n} for "
                          f"{arch.family}; set method.align_heads=true or change method.round_to")
    return n
