"""S²FT configuration: how many heads/channels to train, how to pick them, and how to train them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sparsetune.config.schema import MethodConfig, one_of
from sparsetune.errors import ConfigError


@dataclass
class S2FTConfig(MethodConfig):
    """Defaults follow the paper's LLaMA2-7B commonsense setting (53 heads, ~220 channels/layer)."""

    name: str = "s2ft"
    # fractions of all (layer x unit) pairs that are trained
    o_ratio: float = 0.052  # query heads: o_proj input columns (head_dim each)
    d_ratio: float = 0.02  # FFN channels: down_proj input columns
    v_ratio: float = 0.0  # kv-groups: v_proj output rows (head_dim each; whole groups under GQA)
    u_ratio: float = 0.0  # FFN channels: up_proj output rows
    # if set, scale the ratios so trainable params equal LoRA rank r on `match_lora_modules`
    match_lora_rank: Optional[int] = None
    # role names (q, k, v, o, gate, up, down) or attribute names (q_proj, ...), as LoRA's target_modules
    match_lora_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "up", "down"])
    selection: str = one_of("random", "random", "weight", "activation", "gradient")
    # score-based selection keeps the largest or the smallest scores
    selection_order: str = one_of("largest", "largest", "smallest")
    # global: over (layer x unit) like the paper | per_layer: equal counts
    allocation: str = one_of("global", "global", "per_layer")
    # only the top fraction of blocks hold trained units (1.0 = all blocks, the paper); autograd then
    # builds no graph below the lowest of them, so backward and saved activations shrink with it
    top_fraction: float = 1.0
    seed: int = 0
    calibration_batches: int = 4  # batches for activation/gradient scores
    # co-permute so trained units form one contiguous slice; null = auto (only when v/u rows are trained)
    permute: Optional[bool] = None
    # cut the graph below the lowest block holding a trained slice (matters when inputs require grad,
    # e.g. gradient checkpointing's enable_input_require_grads)
    stop_at_lowest_trained_layer: bool = False
    # dtype of the trainable slices (master weights and optimizer state)
    optimizer_dtype: str = one_of("float32", "float32", "bfloat16", "float16")

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_config(cfg)


def check_config(cfg) -> None:
    """Ranges, one readable line per bad value (OmegaConf checks types, `check_choices` the enums)."""
    for key in ("o_ratio", "d_ratio", "v_ratio", "u_ratio"):
        value = float(getattr(cfg, key))
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"method.{key}: {value} must be between 0 and 1")
    if cfg.match_lora_rank is not None and cfg.match_lora_rank <= 0:
        raise ConfigError(f"method.match_lora_rank: {cfg.match_lora_rank} must be a positive integer")
    if all(float(getattr(cfg, k)) == 0.0 for k in ("o_ratio", "d_ratio", "v_ratio", "u_ratio")):
        raise ConfigError("method: o_ratio, d_ratio, v_ratio and u_ratio are all 0; nothing would be trained")
    if not 0.0 < float(cfg.top_fraction) <= 1.0:
        raise ConfigError(f"method.top_fraction: {cfg.top_fraction} must be in (0, 1]")
    if cfg.calibration_batches < 1:
        raise ConfigError("method.calibration_batches: must be at least 1")
