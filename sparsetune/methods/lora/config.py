"""LoRA's and DoRA's config: light (no torch, no PEFT), so a command line is checked before anything
heavy is imported."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsetune.config.schema import MethodConfig
from sparsetune.errors import ConfigError


@dataclass
class LoRAConfig(MethodConfig):
    """PEFT's LoraConfig under the names every LoRA in this project uses: r, alpha (lora_alpha),
    dropout (lora_dropout), target_modules."""

    name: str = "lora"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # role names (q, k, v, o, gate, up, down), attribute names (q_proj, …) or groups (attn, mlp): models/arch.py
    target_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "up", "down"])
    train_head: bool = False  # also train the classifier head (vision)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_lora(cfg)


def check_lora(cfg) -> None:
    """The LoRA knobs every method with a LoRA shares (r, dropout), one ConfigError line each."""
    if int(cfg.r) < 1:
        raise ConfigError(f"method.r: {cfg.r} must be a positive integer (the LoRA rank)")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise ConfigError(f"method.dropout: {cfg.dropout} must be in [0, 1)")


@dataclass
class DoRAConfig(LoRAConfig):
    name: str = "dora"
