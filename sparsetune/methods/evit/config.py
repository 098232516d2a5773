"""EViT configuration: keep rate, where tokens are reorganised, fusion, and the keep-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sparsetune.config.schema import MethodConfig
from sparsetune.errors import ConfigError


@dataclass
class EViTConfig(MethodConfig):
    """Defaults follow the paper's DeiT-S setting (keep 0.7 at the 4th, 7th and 10th of 12 blocks)."""

    name: str = "evit"
    # fraction of the non-class tokens (patch tokens, plus an earlier fused token) kept at each
    # reorganisation block: ceil(keep_rate * n) survive; 1.0 is the unmodified model
    keep_rate: float = 0.7
    # 0-based blocks that reorganise tokens (after attention, before the MLP). null: the paper's
    # 4th/7th/10th of 12, scaled to the model's depth (round(d/4), round(d/2), round(3d/4))
    reorg_layers: Optional[list[int]] = None
    # fuse the dropped tokens into one token weighted by their class attention (the paper); false: drop them
    fuse: bool = True
    # divide the fusion weights by their sum (a weighted mean); false = the paper's raw weights
    renormalize: bool = False
    # false: use the model off the shelf (everything frozen; evaluation only)
    train: bool = True
    # training keep rate: 1.0 until anneal_start, cosine down to keep_rate at anneal_end (fractions of
    # the run's steps); anneal_end == anneal_start is a step there (both 0: the target from the first step).
    # Defaults: the paper's training from scratch, epochs 10 to 110 of 300
    anneal_start: float = 10 / 300
    anneal_end: float = 110 / 300
    # keep rates `sparsetune eval` scores one by one when eval.points is not given ([] = just keep_rate)
    eval_keep_rates: list[float] = field(default_factory=list)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_config(cfg)


def check_keep_rate(value: float, where: str) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{where}: keep rate {value} must be in (0, 1]")
    return value


def check_config(cfg) -> None:
    """One readable line per bad value (OmegaConf only checks types)."""
    check_keep_rate(cfg.keep_rate, "method.keep_rate")
    for r in cfg.eval_keep_rates or []:
        check_keep_rate(r, "method.eval_keep_rates")
    for key in ("anneal_start", "anneal_end"):
        value = float(getattr(cfg, key))
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"method.{key}: {value} must be a fraction of the run between 0 and 1")
    if float(cfg.anneal_end) < float(cfg.anneal_start):
        raise ConfigError(f"method.anneal_end: {cfg.anneal_end} is before method.anneal_start={cfg.anneal_start}; "
                          "give an end at or after the start (equal: a step from 1.0 to the keep rate there)")
    if cfg.reorg_layers is not None:
        layers = [int(i) for i in cfg.reorg_layers]
        if len(set(layers)) != len(layers) or any(i < 0 for i in layers):
            raise ConfigError(f"method.reorg_layers: {layers} must be distinct 0-based block indices")


def default_reorg_layers(depth: int) -> list[int]:
    """The paper's blocks 3, 6, 9 (0-based) of 12, scaled to `depth`; never the first block."""
    return sorted({min(depth - 1, max(1, round(i * depth / 4))) for i in (1, 2, 3)}) if depth > 1 else []
