"""PAT (pruning-aware tuning, arXiv 2408.14721) as a sparsetune Method.

apply(): LoRA/DoRA through PEFT (or full / frozen base), then an HSM on every residual-stream write
(o_proj and down_proj outputs of each block, the token embedding: 2L+1) sharing one trainable channel
mask. Training adds the mask (count + polarisation) and identity losses; after t0 the gate is the
hard top-N set. export()/prepare_for_eval() fold everything and remove the pruned hidden channels,
giving a smaller stock Hugging Face model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetune.errors import ConfigError
from sparsetune.methods.base import Method
from sparsetune.methods.lora import DoRA, DoRAConfig, LoRA, LoRAConfig

from .channels import kept_channels_for
from .compare import baseline_tables, load_baseline
from .config import PATConfig, resolve_rank
from .export import load_pruned_export, write_pruned_export
from .hsm import HSM, ResidualWrite, wrap
from .importance import hidden_importance, top_channels
from .mask import SharedMask
from .merge import (
    base_of,
    check_supported,
    hsm_maps,
    prune_hidden,
    pruned_param_count,
)


class PAT(Method):
    """Hybrid sparsification modules + a shared trainable hidden-channel mask, then physical pruning."""
    strategies = ("ddp", "fsdp")
    ddp_find_unused = True  # the shared mask can miss a step's graph (docs/scale-out.md)

    config_class = PATConfig
    jobs = ("prune",)

    def __init__(self, cfg: PATConfig):
        super().__init__(cfg)
        self.mask: SharedMask | None = None
        self.writes: list[ResidualWrite] = []
        self.hidden = 0
        self.n_keep = 0
        self.rank = 0
        self.embed_hsm = ""
        self.params_before: int | None = None
        self.params_after: int | None = None
        self._schedule = (0, 0)  # (step, total_steps)
        self._pending: dict[str, Any] | None = None
        self._pruned: tuple | None = None  # (parameter-version key, last pruned model)
        self.baseline: dict[str, Any] | None = None  # the unpruned run named by baseline_run
        self.exported: dict[str, Any] = {}  # figures known once export() ran (size on disk)
        self._untrained_warned = False
        self._notices: list[str] = []

    # ------------------------------------------------------------------ sizing
    def kept_channels(self, arch) -> int:
        """N = round((1 - prune_ratio) d), rounded to round_to (and the head count when needed)."""
        cfg = self.cfg
        return kept_channels_for(arch, cfg.prune_ratio, cfg.round_to, cfg.align_heads)

    # ------------------------------------------------------------------ apply
    def apply(self, model: nn.Module, ctx) -> nn.Module:
        self.ctx, arch = ctx, ctx.arch
        if self.mask is not None:
            raise RuntimeError("PAT.apply was already called; build a new PAT for another model")
        check_supported(arch)
        cfg = self.cfg
        if cfg.baseline_run:
            self.baseline = load_baseline(cfg.baseline_run)
        d = arch.hidden_size
        self.hidden, self.n_keep = d, self.kept_channels(arch)
        self.rank = resolve_rank(cfg.rank, d)
        self.embed_hsm = cfg.embed_hsm if cfg.embed_hsm != "auto" else ("diag" if arch.tied_embeddings else "full")
        embed_kind = "diag" if self.embed_hsm == "diag" else cfg.hsm
        self.params_before = sum(p.numel() for p in model.parameters())
        self.params_after = pruned_param_count(arch, self.params_before, self.n_keep,
                                               tied_after=arch.tied_embeddings and embed_kind == "diag")
        frozen_keep = self._frozen_selection(model, arch) if cfg.freeze_mask else None
        names = arch.linear_names()
        embed_name = arch.name_of(arch.embed)

        model = self._apply_base(model, arch)
        hf = base_of(model)
        device = arch.embed.weight.device
        mask = SharedMask(d, self.n_keep, cfg.tau_max, frozen_keep, cfg.freeze_decay).to(device)
        hf.add_module("pat_mask", mask)
        for b in arch.blocks:  # block modules survive PEFT; their o/down attributes may now be LoRA layers
            for role in ("o", "down"):
                self.writes.append(wrap(b.module, names[role], HSM(d, self.rank, cfg.hsm).to(device), mask, role))
        self.writes.append(wrap(hf, embed_name, HSM(d, self.rank, embed_kind).to(device), mask, "embed"))
        self.mask = mask
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        return model

    def _apply_base(self, model: nn.Module, arch) -> nn.Module:
        cfg = self.cfg
        if cfg.base in ("lora", "dora") or cfg.use_dora:
            dora = cfg.base == "dora" or cfg.use_dora
            lcfg = (DoRAConfig if dora else LoRAConfig)(r=int(cfg.r), alpha=float(cfg.alpha), dropout=float(cfg.dropout),
                                                       target_modules=list(cfg.target_modules))
            return (DoRA if dora else LoRA)(lcfg).apply(model, replace(self.ctx, arch=arch))
        for p in model.parameters():
            p.requires_grad_(cfg.base == "full")
        return model

    def _frozen_selection(self, model: nn.Module, arch) -> torch.Tensor:
        """The ablation's fixed channel set: top-N hidden channels by weight or activation importance."""
        if self._pending and self._pending.get("frozen_keep") is not None:
            return torch.tensor(self._pending["frozen_keep"], dtype=torch.long)
        batches = None
        if self.cfg.freeze_selection == "activation":
            if self.ctx.calibration_batches is None:
                raise ConfigError("method.freeze_selection=activation needs calibration batches (none were given)")
            batches = self.ctx.calibration_batches(int(self.cfg.calibration_batches))
        scores = hidden_importance(model, arch, batches, self.cfg.freeze_selection)
        return top_channels(scores, self.n_keep)

    # ------------------------------------------------------------------ training
    def parameter_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Base + HSM matrices (lr, wd) | HSM scales (lr, no wd) | shared mask (mask_lr, no wd)."""
        special = {id(w.hsm.s) for w in self.writes}
        mask_ids = {id(self.mask.m)} if self.mask is not None else set()
        main, scales, mask = [], [], []
        for p in model.parameters():
            if not p.requires_grad:
                continue
            (mask if id(p) in mask_ids else scales if id(p) in special else main).append(p)
        mask_lr = float(self.cfg.mask_lr) if self.cfg.mask_lr is not None else lr
        return [{"params": main, "lr": lr, "weight_decay": weight_decay},
                {"params": scales, "lr": lr, "weight_decay": 0.0},
                {"params": mask, "lr": mask_lr, "weight_decay": 0.0}]

    def identity_loss(self) -> torch.Tensor:
        """Sum over every HSM with a matrix (all 2L+1 with a full embedding HSM; the reference: the last only)."""
        with_l1 = self.cfg.identity_terms == "both"
        losses = [w.hsm.identity_loss(with_l1) for w in self.writes if w.hsm.has_matrix]
        if not losses:
            return self.mask.m.new_zeros(())
        return torch.stack(losses).sum()

    def mask_loss(self) -> torch.Tensor:
        mask = self.mask
        if mask.frozen or mask.hard or not mask.m.requires_grad:
            return mask.m.new_zeros(())
        return (float(self.cfg.count_weight) * mask.count_loss()
                + float(self.cfg.polarization_weight) * mask.polarization_loss())

    def extra_loss(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        if self.mask is None:
            return {}
        with torch.autocast(device_type=self.mask.m.device.type, enabled=False):
            out = {"mask": self.mask_loss()}
            if float(self.cfg.identity_weight) > 0:
                out["identity"] = float(self.cfg.identity_weight) * self.identity_loss()
        return out

    def on_step(self, step: int, total_steps: int) -> None:
        self._schedule = (int(step), int(total_steps))
        self._pruned = None
        if self.mask is not None:
            self.mask.set_step(step, total_steps, self.cfg.t0_fraction)

    def metrics(self) -> dict[str, float]:
        if self.mask is None:
            return {}
        return {"kept_hidden": self.n_keep, "hidden_size": self.hidden,
                "params_before": self.params_before, "params_after": self.params_after, **self.mask.stats(),
                **self.exported}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        mask = self.mask
        return {
            "step": self._schedule[0],
            "total_steps": self._schedule[1],
            "hidden": self.hidden,
            "n_keep": self.n_keep,
            "keep": None if mask is None or mask.keep is None else mask.keep.tolist(),
            "frozen_keep": None if mask is None or not mask.frozen
            else torch.nonzero(mask.m.detach().cpu() > 0).flatten().tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Before apply(): remembered and used by apply(); after apply(): restored now."""
        if self.mask is None:
            self._pending = dict(state)
        else:
            self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("n_keep") and int(state["n_keep"]) != self.n_keep:
            raise ConfigError(f"checkpoint keeps {state['n_keep']} hidden channels but method.prune_ratio gives "
                              f"{self.n_keep}; resume with the same method settings")
        if state.get("total_steps"):
            self.on_step(int(state["step"]), int(state["total_steps"]))
        if state.get("keep") is not None:
            self.mask.keep = torch.tensor(state["keep"], dtype=torch.long)

    # ------------------------------------------------------------------ merge / export
    def keep_index(self) -> torch.Tensor:
        """The hidden channels the export keeps (exactly N, ascending)."""
        return self.mask.current_keep()

    def pruned_model(self, model: nn.Module) -> nn.Module:
        """A new stock HF model: LoRA and HSMs folded, hidden channels removed; `model` is untouched.

        The last result is reused while no parameter changed or moved (final evaluation, then export).
        """
        if self.mask is None:
            raise RuntimeError("PAT.apply() has not been called")
        key = (id(model), id(self.mask.keep), tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters()))
        if self._pruned is not None and self._pruned[0] == key:
            return self._pruned[1]
        write_maps, embed_map = hsm_maps(model)
        pruned = prune_hidden(model, None, self.keep_index(), write_maps=write_maps, embed_map=embed_map,
                              assume_zero=True)
        self._pruned = (key, pruned)
        return pruned

    def prepare_for_eval(self, model: nn.Module) -> nn.Module:
        if self._schedule[1] == 0 and not self._untrained_warned:  # `sparsetune eval recipe=pat_...`
            self._untrained_warned = True
            self._notices.append(
                f"PAT is untrained: its mask has chosen nothing yet, so this evaluates the first "
                f"{self.n_keep} of {self.hidden} hidden channels, pruned without tuning. For the base model use "
                "`sparsetune eval recipe=lora_llama`; for magnitude pruning without tuning `sparsetune eval "
                "recipe=pat_baseline_llama`.")
        pruned = self.pruned_model(model)
        pruned.requires_grad_(False)
        return pruned

    def export(self, model: nn.Module, path: Path, tokenizer=None) -> Path:
        """`path` = a stock HF folder (config.json with hidden_size = d', safetensors) + pat.json."""
        pruned = self.pruned_model(model)
        info = {"method": "pat", "hidden_size": self.hidden, "kept_hidden": self.n_keep,
                "keep_index": self.keep_index().tolist(), "embed_hsm": self.embed_hsm}
        # summary.json figures (metrics() is merged into it after export; per-step logs never see these)
        self.exported = write_pruned_export(pruned, path, tokenizer if tokenizer is not None else self.ctx.tokenizer,
                                            info, self.params_before, self.baseline)
        self.params_after = sum(p.numel() for p in pruned.parameters())
        return Path(path)

    def load_export(self, model: nn.Module, path: Path) -> nn.Module | None:
        return load_pruned_export(model, path)

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return baseline_tables(self.baseline)

    def notices(self) -> list[str]:
        out, self._notices = self._notices, []
        return out
