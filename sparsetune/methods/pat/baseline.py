"""Prune-then-finetune baseline for PAT: remove hidden channels by importance first, then recover with LoRA.

The comparison the PAT paper makes (LLM-Pruner / SliceGPT style, prune -> fine-tune): channel importance
(weight magnitude or calibration activations) picks exactly the N channels PAT would keep (same rounding
rules), `prune_hidden` cuts them out of the dense model with no training, and LoRA (PEFT) then tunes
the smaller stock model. The export is that model with LoRA merged: a stock HF checkpoint, like PAT's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from sparsetune.errors import ConfigError
from sparsetune.methods.base import Method, MethodConfig

from .compare import baseline_tables, load_baseline
from .config import kept_channels_for
from .export import load_pruned_export, write_pruned_export
from .importance import KINDS, hidden_importance, top_channels
from .merge import check_supported, prune_hidden

BASES = ("lora", "dora", "full")


@dataclass
class PruneLoRAConfig(MethodConfig):
    """Sizing as PAT (prune_ratio, round_to, align_heads); LoRA defaults as PAT's, so only pruning differs."""

    name: str = "prune_lora"
    prune_ratio: float = 0.25  # fraction of hidden channels removed before fine-tuning
    importance: str = "magnitude"  # magnitude (weights) | activation (residual-stream RMS on calibration batches)
    calibration_batches: int = 4  # training batches for activation importance
    round_to: int = 1
    align_heads: Any = "auto"
    base: str = "lora"  # what trains on the pruned model: lora | dora | full
    lora_r: int = 20
    lora_alpha: float = 4.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    baseline_run: Optional[str] = None  # an unpruned run recorded next to this one (see PAT)


def check_config(cfg) -> None:
    if cfg.importance not in KINDS:
        raise ConfigError(f"method.importance: '{cfg.importance}' is not one of {' | '.join(KINDS)}")
    if cfg.base not in BASES:
        raise ConfigError(f"method.base: '{cfg.base}' is not one of {' | '.join(BASES)}")
    if not 0.0 < float(cfg.prune_ratio) < 1.0:
        raise ConfigError(f"method.prune_ratio: {cfg.prune_ratio} must be between 0 and 1 (exclusive)")
    if int(cfg.round_to) < 1:
        raise ConfigError(f"method.round_to: {cfg.round_to} must be a positive integer")
    if cfg.align_heads not in ("auto", True, False):
        raise ConfigError(f"method.align_heads: '{cfg.align_heads}' must be auto | true | false")
    if int(cfg.lora_r) < 1:
        raise ConfigError(f"method.lora_r: {cfg.lora_r} must be a positive integer")
    if int(cfg.calibration_batches) < 1:
        raise ConfigError("method.calibration_batches: must be at least 1")


class PruneLoRA(Method):
    """apply() returns a new, physically smaller model (LoRA-wrapped); the dense input is left as it was."""

    config_class = PruneLoRAConfig
    jobs = ("prune",)

    def __init__(self, cfg: PruneLoRAConfig):
        super().__init__(cfg)
        check_config(cfg)
        self.hidden = 0
        self.n_keep = 0
        self.keep: torch.Tensor | None = None
        self.params_before: int | None = None
        self.params_after: int | None = None
        self.baseline: dict[str, Any] | None = None
        self.exported: dict[str, Any] = {}
        self._pending_keep: list[int] | None = None
        self._merged: tuple | None = None  # (parameter-version key, merged stock model)

    # ------------------------------------------------------------------ apply
    def apply(self, model: nn.Module, ctx) -> nn.Module:
        from sparsetune.models.arch import get_arch

        self.ctx, arch = ctx, ctx.arch
        if self.keep is not None:
            raise RuntimeError("PruneLoRA.apply was already called; build a new method for another model")
        check_supported(arch)
        cfg = self.cfg
        if cfg.baseline_run:
            self.baseline = load_baseline(cfg.baseline_run)
        self.hidden = arch.hidden_size
        self.n_keep = kept_channels_for(arch, cfg.prune_ratio, cfg.round_to, cfg.align_heads)
        self.params_before = sum(p.numel() for p in model.parameters())
        if self._pending_keep is not None:  # resume: the checkpoint's channels, not a fresh selection
            if len(self._pending_keep) != self.n_keep:
                raise ConfigError(f"checkpoint keeps {len(self._pending_keep)} hidden channels but "
                                  f"method.prune_ratio gives {self.n_keep}; resume with the same method settings")
            self.keep = torch.tensor(self._pending_keep, dtype=torch.long)
        else:
            self.keep = top_channels(self.importance(model, arch), self.n_keep)
        # a dense model's dropped channels are not zero: slice the norm gains as they are (no sqrt(d/d') fix)
        pruned = prune_hidden(model, arch, self.keep, assume_zero=False)
        self.params_after = sum(p.numel() for p in pruned.parameters())
        return self._apply_base(pruned, get_arch(pruned))

    def importance(self, model: nn.Module, arch) -> torch.Tensor:
        batches = None
        if self.cfg.importance == "activation":
            if self.ctx.calibration_batches is None:
                raise ConfigError("method.importance=activation needs calibration batches (none were given)")
            batches = self.ctx.calibration_batches(int(self.cfg.calibration_batches))
        return hidden_importance(model, arch, batches, self.cfg.importance)

    def _apply_base(self, model: nn.Module, arch) -> nn.Module:
        cfg = self.cfg
        if cfg.base == "full":
            model.requires_grad_(True)
            return model
        from sparsetune.methods.lora import DoRA, DoRAConfig, LoRA, LoRAConfig

        dora = cfg.base == "dora"
        lcfg = (DoRAConfig if dora else LoRAConfig)(r=int(cfg.lora_r), alpha=float(cfg.lora_alpha),
                                                   dropout=float(cfg.lora_dropout), target_modules=list(cfg.lora_targets))
        return (DoRA if dora else LoRA)(lcfg).apply(model, replace(self.ctx, arch=arch))

    # ------------------------------------------------------------------ figures / state
    def metrics(self) -> dict[str, Any]:
        if self.keep is None:
            return {}
        return {"kept_hidden": self.n_keep, "hidden_size": self.hidden, "params_before": self.params_before,
                "params_after": self.params_after, **self.exported}

    def state_dict(self) -> dict[str, Any]:
        return {"keep": None if self.keep is None else self.keep.tolist(), "n_keep": self.n_keep}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before apply() (the engine's resume order): the same channels are pruned again."""
        keep = state.get("keep")
        if self.keep is None:
            self._pending_keep = None if keep is None else list(keep)
        elif keep is not None and list(keep) != self.keep.tolist():
            raise ConfigError("checkpoint pruned other hidden channels than this model; resume before apply()")

    # ------------------------------------------------------------------ eval / export
    def merged_model(self, model: nn.Module) -> nn.Module:
        """A stock HF copy with the adapters merged; the training model is untouched. Reused while unchanged."""
        key = (id(model), tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters()))
        if self._merged is not None and self._merged[0] == key:
            return self._merged[1]
        self._merged = None
        merged = copy.deepcopy(model)
        if hasattr(merged, "merge_and_unload"):
            merged = merged.merge_and_unload()
        merged.requires_grad_(False)
        self._merged = (key, merged.eval())
        return merged

    def prepare_for_eval(self, model: nn.Module) -> nn.Module:
        return self.merged_model(model)

    def export(self, model: nn.Module, path: Path, tokenizer=None) -> Path:
        """A stock HF folder (hidden_size = d', LoRA merged) + pat.json, loadable with plain transformers."""
        info = {"method": "prune_lora", "importance": self.cfg.importance, "hidden_size": self.hidden,
                "kept_hidden": self.n_keep, "keep_index": self.keep.tolist()}
        self.exported = write_pruned_export(self.merged_model(model), path,
                                            tokenizer if tokenizer is not None else self.ctx.tokenizer,
                                            info, self.params_before, self.baseline)
        return Path(path)

    def load_export(self, model: nn.Module, path: Path) -> nn.Module | None:
        return load_pruned_export(model, path)

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return baseline_tables(self.baseline)
