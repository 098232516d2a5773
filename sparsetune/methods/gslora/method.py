"""GS-LoRA / GS-LoRA++ and the forgetting baselines as one ForgettingMethod; the `forget` job
drives the tasks.

Per task the job calls `start_task` (fresh adapter or, for the baselines, what trains; prototypes),
trains through the engine's TrainLoop, then `end_task` (explicit merge; surviving groups).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetune.methods.base import ForgetTask, ForgettingMethod
from sparsetune.methods.gslora import losses
from sparsetune.methods.gslora.config import (
    FullForgetConfig,
    GSLoRAConfig,
    GSLoRAPlusConfig,
    NoSparsityConfig,
    RetrainConfig,
)
from sparsetune.methods.gslora.groups import build_groups, group_lasso, proximal_step, snap_to_zero, surviving
from sparsetune.methods.gslora.lora import attach, merge, target_linears
from sparsetune.methods.gslora.prototypes import HeadInput, carry_over, class_prototypes, features


class GSLoRA(ForgettingMethod):
    config_class = GSLoRAConfig

    def __init__(self, cfg: GSLoRAConfig):
        super().__init__(cfg)
        self.arch = None
        self.wrapped: dict = {}
        self.groups: list = []
        self.targets: dict = {}
        self.prototypes: torch.Tensor | None = None
        self.proto_known: torch.Tensor | None = None  # classes that have a prototype
        self.capture: HeadInput | None = None
        self.alpha_now = 0.0
        self.zeroed: list[str] = []
        self.bnd = 0.0

    # --- setup ------------------------------------------------------------------------------
    def apply(self, model: nn.Module, ctx) -> nn.Module:
        self.ctx, self.arch = ctx, ctx.arch
        arch = ctx.arch
        num_labels = int(model.config.num_labels)
        self.bnd = self.cfg.bnd if self.cfg.bnd is not None else losses.default_bnd(num_labels, self.cfg.bnd_margin)
        if self.cfg.train == "lora":
            target_linears(arch, list(self.cfg.target_modules), self.cfg.layers)  # fail on bad placement now
        if self.cfg.prototypes and self.cfg.proto_on == "embeddings":
            self.capture = HeadInput(arch.head)
        model.requires_grad_(self.cfg.train != "lora")
        return model

    def trainer_overrides(self) -> dict[str, Any]:
        """Per-method lr / steps per task / selection interval (LoRA and full fine-tuning differ)."""
        cfg = self.cfg
        out = {"lr": cfg.lr, "max_steps": cfg.steps, "eval_every": cfg.select_every or None}
        return {k: v for k, v in out.items() if v is not None}

    def selection_start(self, total_steps: int) -> int:
        """States before the group-sparsity warm-up ends are not candidates: picking one would undo
        the sparsity phase (its H-mean is often a little higher)."""
        sparse = self.cfg.train == "lora" and self.cfg.group_alpha > 0
        return int(self.cfg.sparsity_warmup * total_steps) if sparse else 0

    def start_task(self, model: nn.Module, task: ForgetTask | None = None) -> None:
        """Fresh trainable state for the next task; prototypes from the model entering the task (for
        classes forgotten earlier: from the last task start at which they were known)."""
        cfg = self.cfg
        self.alpha_now, self.zeroed = 0.0, []
        if cfg.prototypes and task is not None:
            device = self.ctx.device if self.ctx is not None else None
            protos, known = class_prototypes(model, task.batches(), int(model.config.num_labels), cfg.proto_on,
                                             self.capture, device=device)
            protos, known = carry_over(protos, known, self.prototypes, self.proto_known, list(task.earlier))
            self.prototypes, self.proto_known = protos.to(device), known.to(device)
        if cfg.train == "retrain":
            reinitialise(model)
        if cfg.train == "lora":
            model.requires_grad_(False)
            self.targets = target_linears(self.arch, list(cfg.target_modules), cfg.layers)
            self.wrapped = attach(model, self.targets, cfg.r, cfg.alpha)
            self.groups = build_groups(self.targets, self.wrapped, cfg.groups)
        else:
            model.requires_grad_(True)

    def end_task(self, model: nn.Module) -> dict[str, Any]:
        """Merge the adapter into the weights explicitly; report which groups survived."""
        report: dict[str, Any] = {}
        if self.wrapped:
            snap_to_zero(self.groups, self.cfg.zero_below)
            with torch.no_grad():
                norms = {g.name: float(g.norm()) for g in self.groups}
            alive = sorted(n for n, v in norms.items() if v > 0)
            report = {"groups_total": len(self.groups), "groups_surviving": len(alive),
                      "surviving_groups": alive, "group_norms": norms}
            merge(model, self.wrapped)
            self.wrapped, self.groups = {}, []
        return report

    # --- training -----------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        cfg, terms = self.cfg, {}
        use_protos = cfg.prototypes and self.prototypes is not None
        if use_protos and cfg.proto_retain_weight:
            feats_r = features(outputs, self.capture, cfg.proto_on)  # captured by the engine's forward
            feats_r, labels_r = self._with_prototype(feats_r, batch["labels"])
            terms["proto_retain"] = cfg.proto_retain_weight * losses.prototype_pull(
                feats_r, labels_r, self.prototypes, cfg.proto_kl)
        if "forget_pixel_values" in batch and (cfg.beta or (use_protos and cfg.proto_forget_weight)):
            out_f = model(pixel_values=batch["forget_pixel_values"])
            if cfg.beta:
                forget = losses.FORGET_LOSSES[cfg.forget_loss]
                terms["forget"] = cfg.beta * forget(out_f.logits, batch["forget_labels"], self.bnd)
            if use_protos and cfg.proto_forget_weight:
                feats_f, labels_f = self._with_prototype(features(out_f, self.capture, cfg.proto_on),
                                                         batch["forget_labels"])
                terms["proto_forget"] = cfg.proto_forget_weight * losses.prototype_push(
                    feats_f, labels_f, self.prototypes, cfg.proto_bnd, cfg.proto_kl, cfg.proto_push)
        if self.groups and self.alpha_now and not cfg.proximal:
            terms["sparsity"] = self.alpha_now * group_lasso(self.groups)
        return terms

    def _with_prototype(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Only samples whose class has a prototype take part in the prototype terms (a class never
        seen by any task start has none; its zero row would be meaningless)."""
        if self.proto_known is None:
            return feats, labels
        keep = self.proto_known.to(labels.device)[labels]
        return (feats, labels) if bool(keep.all()) else (feats[keep], labels[keep])

    def on_step(self, step: int, total_steps: int) -> None:
        self.alpha_now = losses.sparsity_weight(step, total_steps, self.cfg.group_alpha, self.cfg.sparsity_warmup)
        if self.cfg.proximal and self.groups and self.alpha_now:
            optimizer = self.ctx.optimizer if self.ctx is not None else None
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else 0.0
            self.zeroed = proximal_step(self.groups, lr * self.alpha_now, optimizer)

    def metrics(self) -> dict[str, float]:
        if not self.groups:
            return {"bnd": self.bnd}
        norms = surviving(self.groups)
        cut = self.cfg.zero_below * max(norms.values(), default=0.0)
        return {"bnd": self.bnd, "gs_alpha": self.alpha_now,
                "groups_surviving": float(sum(v >= cut for v in norms.values()))}

    def prepare_for_eval(self, model: nn.Module) -> nn.Module:
        return model  # the unmerged adapter computes the same function; merging is end_task's job

    def export(self, model: nn.Module, path: Path) -> Path:
        """The merged stock HF model after the last task (adapters are merged by then)."""
        if self.wrapped:
            raise RuntimeError("export before end_task: the adapter is not merged yet")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        return path


@torch.no_grad()
def reinitialise(model: nn.Module) -> None:
    """Random weights from the model's own config (the oracle retrains from scratch)."""
    fresh = type(model)(model.config)
    model.load_state_dict(fresh.state_dict())


class GSLoRAPlus(GSLoRA):
    config_class = GSLoRAPlusConfig


class NoSparsity(GSLoRA):
    config_class = NoSparsityConfig


class FullForget(GSLoRA):
    config_class = FullForgetConfig


class Retrain(GSLoRA):
    config_class = RetrainConfig
