"""Prune-then-finetune baseline for PAT: remove hidden channels by importance first, then recover with LoRA.

The comparison the PAT paper makes (LLM-Pruner / SliceGPT style, prune -> fine-tune): channel importance
(weight magnitude or calibration activations) picks exactly the N channels PAT would keep (same rounding
rules), `prune_hidden` cuts them out of the dense model with no training, and LoRA (PEFT) then tunes
the smaller stock model. The export is that model with LoRA merged: a stock HF checkpoint, like PAT's.

RMSNorm after the cut: the dense model's dropped channels are not zero, so neither slicing the gains as
they are (`none`) nor PAT's exact fold (`exact`: gains x sqrt(d/d'), eps x d/d', exact when the dropped
channels carry nothing) is exact. Without a correction every norm output shrinks by up to sqrt(d'/d),
which a low-rank LoRA cannot undo; `auto` keeps whichever gives the lower loss on calibration batches.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetune.errors import ConfigError
from sparsetune.methods.base import Method
from sparsetune.methods.lora import DoRA, DoRAConfig, LoRA, LoRAConfig
from sparsetune.models.arch import get_arch

from .channels import kept_channels_for
from .compare import baseline_tables, load_baseline
from .config import PruneLoRAConfig
from .export import load_pruned_export, write_pruned_export
from .importance import hidden_importance, top_channels
from .merge import check_supported, prune_hidden


class PruneLoRA(Method):
    """apply() returns a new, physically smaller model (LoRA-wrapped); the dense input is left as it was."""

    config_class = PruneLoRAConfig
    jobs = ("prune",)

    def __init__(self, cfg: PruneLoRAConfig):
        super().__init__(cfg)
        self.hidden = 0
        self.n_keep = 0
        self.keep: torch.Tensor | None = None
        self.params_before: int | None = None
        self.params_after: int | None = None
        self.baseline: dict[str, Any] | None = None
        self.exported: dict[str, Any] = {}
        self._pending_keep: list[int] | None = None
        self._pending_norm: str | None = None
        self.norm_used: str | None = None  # exact | none, what the pruned model got
        self.prune_losses: dict[str, float] = {}  # untuned pruned model's calibration loss per correction
        self._merged: tuple | None = None  # (parameter-version key, merged stock model)

    # ------------------------------------------------------------------ apply
    def apply(self, model: nn.Module, ctx) -> nn.Module:
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
        pruned = self._prune(model, arch)
        self.params_after = sum(p.numel() for p in pruned.parameters())
        return self._apply_base(pruned, get_arch(pruned))

    def _prune(self, model: nn.Module, arch) -> nn.Module:
        """The stock pruned model with the configured norm correction (auto: measured, the lower loss wins)."""
        mode = self._pending_norm or self.cfg.norm_correction
        if mode == "auto" and self.ctx.calibration_batches is None:
            mode = "exact"  # nothing to measure on: PAT's fold, exact when the dropped channels are small
        if mode != "auto":
            self.norm_used = mode
            return prune_hidden(model, arch, self.keep, assume_zero=mode == "exact")
        batches = self.ctx.calibration_batches(int(self.cfg.calibration_batches))
        best = None
        for candidate in ("exact", "none"):
            pruned = prune_hidden(model, arch, self.keep, assume_zero=candidate == "exact")
            self.prune_losses[candidate] = lm_loss(pruned, batches)
            if best is None or self.prune_losses[candidate] < self.prune_losses[best[0]]:
                best = (candidate, pruned)
            del pruned
        self.norm_used = best[0]
        return best[1]

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

        dora = cfg.base == "dora"
        lcfg = (DoRAConfig if dora else LoRAConfig)(r=int(cfg.r), alpha=float(cfg.alpha),
                                                   dropout=float(cfg.dropout), target_modules=list(cfg.target_modules))
        return (DoRA if dora else LoRA)(lcfg).apply(model, replace(self.ctx, arch=arch))

    # ------------------------------------------------------------------ figures / state
    def metrics(self) -> dict[str, Any]:
        if self.keep is None:
            return {}
        losses = {f"prune_loss_{k}": v for k, v in self.prune_losses.items()}
        return {"kept_hidden": self.n_keep, "hidden_size": self.hidden, "params_before": self.params_before,
                "params_after": self.params_after, "norm_correction_exact": int(self.norm_used == "exact"),
                **losses, **self.exported}

    def state_dict(self) -> dict[str, Any]:
        return {"keep": None if self.keep is None else self.keep.tolist(), "n_keep": self.n_keep,
                "norm_correction": self.norm_used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before apply() (the engine's resume order): the same channels are pruned again."""
        keep = state.get("keep")
        if self.keep is None:
            self._pending_keep = None if keep is None else list(keep)
            self._pending_norm = state.get("norm_correction")  # auto's choice, not re-measured
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
        info = {"method": "prune_lora", "importance": self.cfg.importance, "norm_correction": self.norm_used,
                "prune_losses": self.prune_losses, "hidden_size": self.hidden,
                "kept_hidden": self.n_keep, "keep_index": self.keep.tolist()}
        self.exported = write_pruned_export(self.merged_model(model), path,
                                            tokenizer if tokenizer is not None else self.ctx.tokenizer,
                                            info, self.params_before, self.baseline)
        return Path(path)

    def load_export(self, model: nn.Module, path: Path) -> nn.Module | None:
        return load_pruned_export(model, path)

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return baseline_tables(self.baseline)


@torch.no_grad()
def lm_loss(model: nn.Module, batches) -> float:
    """Mean next-token cross-entropy over every attended token of `batches` (no labels needed)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        ids = batch["input_ids"].to(device)
        att = batch.get("attention_mask")
        att = torch.ones_like(ids) if att is None else att.to(device)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(att[:, 1:] == 0, -100)
        total += float(nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100,
                                                   reduction="sum"))
        count += int((target != -100).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("lm_loss got no tokens")
    return total / count
