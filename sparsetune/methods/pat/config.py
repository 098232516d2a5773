"""PAT configuration and the kept-channel count (the one number the whole method is sized by)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from sparsetune.config.schema import MethodConfig, one_of
from sparsetune.errors import ConfigError
from sparsetune.methods.lora import check_lora

# the LoRA's target roles (PAT's reference tunes every linear)
ALL_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class PATConfig(MethodConfig):
    """Defaults follow the paper / reference (LLaMA2-7B, 25% of the hidden channels pruned)."""

    name: str = "pat"
    prune_ratio: float = 0.25  # fraction of hidden channels removed
    rank: Any = 200  # HSM rank (int) or "auto" = min(200, hidden // 4)
    # lowrank: x + L1 L0 x | dense: D x with D (d x d) initialised to I
    hsm: str = one_of("lowrank", "lowrank", "dense")
    # embedding HSM: full | diag (scale and mask only) | auto = diag when the embeddings are tied, so
    # the exported model stays tied (a full HSM on a tied embedding forces an untied lm_head)
    embed_hsm: str = one_of("auto", "auto", "full", "diag")
    t0_fraction: float = 1.0 / 3.0  # soft-mask phase length as a fraction of training; hard top-N after
    tau_max: float = 100.0  # cap on the mask temperature tau(t) (tau -> inf as t -> t0)
    mask_lr: Optional[float] = None  # learning rate of the shared mask; null = trainer.lr (reference)
    count_weight: float = 10.0  # weight of |#(m >= 0) - N| / N
    polarization_weight: float = 1.0  # weight of the terms pushing m to +-0.5
    identity_weight: float = 1.0  # weight of the identity (orthogonality) loss, summed over all HSMs
    # both: L0 L0^T = I and L1^T L1 = I (paper) | l0: the first only (reference)
    identity_terms: str = one_of("both", "both", "l0")
    freeze_mask: bool = False  # ablation: channels chosen once by importance, pruned ones decayed to 0
    # channel importance of the frozen mask: weights, or activations on calibration batches
    freeze_selection: str = one_of("magnitude", "magnitude", "activation")
    freeze_decay: float = 2.77  # frozen mask: pruned channels gated by exp(-decay * t / t0) before t0
    calibration_batches: int = 4
    # kept channels rounded to a multiple of this. Default 1 (none): on small models rounding moves the ratio a
    # lot (SmolLM2, 9 heads: round_to=8 -> lcm 72, so 20% and 30% both become 432). 8 or 16 avoids odd widths
    # (405 runs ~25% fewer FLOP/s in the o/down GEMMs on CPU, docs/methods/pat.md), 64 suits GPU tensor cores.
    round_to: int = 1
    # also round to a multiple of num_attention_heads: auto = only when transformers would reject the
    # pruned config (e.g. Llama validates hidden_size % heads == 0 even with an explicit head_dim)
    align_heads: Any = one_of("auto", "auto", True, False)
    # what trains besides HSMs and mask
    base: str = one_of("lora", "lora", "dora", "full", "frozen")
    # the LoRA (base=lora|dora), under PEFT's names as in method=lora (r = PEFT's r, not the HSM `rank`)
    r: int = 20
    alpha: float = 4.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEARS))
    use_dora: bool = False  # same as base=dora
    # a finished unpruned run (e.g. `sparsetune train recipe=lora_llama`) whose held-out eval and size are
    # recorded next to this run's in summary.json as `baseline` (the paper's LoRA-without-pruning column)
    baseline_run: Optional[str] = None

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_config(cfg)


def check_config(cfg) -> None:
    """Ranges, one readable line per bad value (OmegaConf checks types, `check_choices` the enums)."""
    if not 0.0 < float(cfg.prune_ratio) < 1.0:
        raise ConfigError(f"method.prune_ratio: {cfg.prune_ratio} must be between 0 and 1 (exclusive)")
    if not 0.0 < float(cfg.t0_fraction) <= 1.0:
        raise ConfigError(f"method.t0_fraction: {cfg.t0_fraction} must be in (0, 1]")
    rank = cfg.rank
    if not (rank == "auto" or (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0)):
        raise ConfigError(f"method.rank: '{rank}' must be a positive integer or 'auto'")
    if int(cfg.round_to) < 1:
        raise ConfigError(f"method.round_to: {cfg.round_to} must be a positive integer")
    if float(cfg.tau_max) <= 1.0:
        raise ConfigError(f"method.tau_max: {cfg.tau_max} must be greater than 1")
    if cfg.mask_lr is not None and float(cfg.mask_lr) <= 0:
        raise ConfigError(f"method.mask_lr: {cfg.mask_lr} must be positive (or null for trainer.lr)")
    check_lora(cfg)
    if int(cfg.calibration_batches) < 1:
        raise ConfigError("method.calibration_batches: must be at least 1")


@dataclass
class PruneLoRAConfig(MethodConfig):
    """Sizing as PAT (prune_ratio, round_to, align_heads); LoRA defaults as PAT's, so only pruning differs."""

    name: str = "prune_lora"
    prune_ratio: float = 0.25  # fraction of hidden channels removed before fine-tuning
    # magnitude (weights) | activation (residual-stream RMS on calibration batches)
    importance: str = one_of("magnitude", "magnitude", "activation")  # importance.KINDS
    calibration_batches: int = 4  # training batches for activation importance
    round_to: int = 1
    align_heads: Any = one_of("auto", "auto", True, False)
    # RMSNorm gains/eps after the cut: exact = PAT's fold (g x sqrt(d/d'), eps x d/d') | none = sliced as
    # they are | auto = the lower LM loss of the two on calibration_batches (exact without batches)
    norm_correction: str = one_of("auto", "exact", "none", "auto")
    base: str = one_of("lora", "lora", "dora", "full")  # what trains on the pruned model
    # the LoRA (base=lora|dora), under PEFT's names as in method=lora
    r: int = 20
    alpha: float = 4.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEARS))
    baseline_run: Optional[str] = None  # an unpruned run recorded next to this one (see PAT)

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_prune_lora(cfg)


def check_prune_lora(cfg) -> None:
    """Ranges, one readable line per bad value (OmegaConf checks types, `check_choices` the enums)."""
    if not 0.0 < float(cfg.prune_ratio) < 1.0:
        raise ConfigError(f"method.prune_ratio: {cfg.prune_ratio} must be between 0 and 1 (exclusive)")
    if int(cfg.round_to) < 1:
        raise ConfigError(f"method.round_to: {cfg.round_to} must be a positive integer")
    check_lora(cfg)
    if int(cfg.calibration_batches) < 1:
        raise ConfigError("method.calibration_batches: must be at least 1")


def resolve_rank(rank: Any, hidden: int) -> int:
    """'auto' -> min(200, d // 4): the reference's 200 is a quarter of nothing on a 576-wide model."""
    return min(200, max(1, hidden // 4)) if rank == "auto" else min(int(rank), hidden)
