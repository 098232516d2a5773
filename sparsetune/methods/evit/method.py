"""EViT as a sparsetune Method: patch the chosen ViT/DeiT layers, anneal the keep rate in training,
export a stock HF folder plus evit.json, and offer keep rates as evaluation points."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from sparsetune.errors import ConfigError
from sparsetune.methods.base import Method, MethodContext, config_dict

from .config import EViTConfig, check_keep_rate, default_reorg_layers
from .flops import Geometry, macs, token_schedule
from .layers import EViTSettings, is_patched, patch_layer, unpatch_layer

FAMILIES = ("vit", "deit")
SETTINGS_FILE = "evit.json"


def cosine_keep_rate(progress: float, target: float, start: float, end: float) -> float:
    """1.0 before `start`, cosine from 1.0 down to `target` over [start, end], `target` after: a step at
    `start` when end == start (the reference's fine-tune: keep 1.0 for 10 of 30 epochs, then the target),
    the target throughout when both are 0."""
    if progress < start:
        return 1.0
    if progress >= end:
        return target
    t = (progress - start) / (end - start)
    return target + (1.0 - target) * (1.0 + math.cos(math.pi * t)) / 2.0


class EViT(Method):
    """Token reorganisation (arXiv 2202.07800) on stock HF ViT/DeiT classifiers."""
    merged_note = ("Plain `from_pretrained` gives the stock ViT (all tokens kept); EViT's token "
                   "reorganisation is re-applied by sparsetune from `evit.json`.")

    config_class = EViTConfig

    def __init__(self, cfg: EViTConfig):
        super().__init__(cfg)
        self.keep_rate = float(cfg.keep_rate)  # the configured (or exported) target; eval points switch settings only
        self.settings = EViTSettings(keep_rate=self.keep_rate, fuse=bool(cfg.fuse),
                                     renormalize=bool(cfg.renormalize))
        self.reorg_layers: list[int] = []
        self.geometry: Geometry | None = None
        self._resumed_keep: float | None = None
        self.model: nn.Module | None = None
        self._attn_guard = None  # forward pre-hook refusing output_attentions while tokens are reorganised

    # ------------------------------------------------------------------ apply
    @property
    def annealed(self) -> bool:
        start, end = float(self.cfg.anneal_start), float(self.cfg.anneal_end)
        return bool(self.cfg.train) and (start > 0 or end > start)

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        self.ctx, arch = ctx, ctx.arch
        if arch.family not in FAMILIES:
            raise ConfigError(f"method evit supports ViT and DeiT image classifiers (arch families "
                              f"{', '.join(FAMILIES)}), not '{arch.family}'")
        depth = len(arch.blocks)
        layers = default_reorg_layers(depth) if self.cfg.reorg_layers is None else sorted(int(i) for i in self.cfg.reorg_layers)
        if any(i >= depth for i in layers):
            raise ConfigError(f"method.reorg_layers: {layers} out of range for a model with {depth} blocks (0-based)")
        base = getattr(model, arch.family)
        self.settings.num_special = 2 if hasattr(base.embeddings, "distillation_token") else 1
        self.settings.train_keep_rate = 1.0 if self.annealed else self.keep_rate
        if self._resumed_keep is not None:
            self.settings.train_keep_rate = self._resumed_keep
        self.reorg_layers = layers
        self.geometry = Geometry.from_config(model.config, self.settings.num_special)
        for i in layers:
            patch_layer(arch.blocks[i].module, self.settings)
        model.requires_grad_(bool(self.cfg.train))
        if self._attn_guard is None:
            self._attn_guard = model.register_forward_pre_hook(self._refuse_attentions, with_kwargs=True)
        self.model = model
        return model

    def _refuse_attentions(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """A reorganising layer computes attention without the attention module, so transformers'
        recorder would return fewer attention maps than layers: say so instead of a short tuple."""
        keep = self.settings.train_keep_rate if model.training else self.settings.keep_rate
        wanted = kwargs.get("output_attentions")
        if wanted is None:
            wanted = getattr(model.config, "output_attentions", False)
        if wanted and keep < 1.0:
            raise ConfigError(f"EViT at keep rate {keep} cannot return attention maps (output_attentions=True): "
                              "its reorganising layers change the token count; use keep rate 1 or the stock model")

    def remove(self, model: nn.Module) -> nn.Module:
        """Undo the patch (the weights are never changed): the stock model again."""
        for layer in model.modules():
            if is_patched(layer):
                unpatch_layer(layer)
        if self._attn_guard is not None:
            self._attn_guard.remove()
            self._attn_guard = None
        return model

    def parameter_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        if not self.cfg.train:
            raise ConfigError("method.train=false uses EViT off the shelf with every weight frozen: "
                              "run `sparsetune eval` instead of training")
        return super().parameter_groups(model, lr, weight_decay)

    def on_step(self, step: int, total_steps: int) -> None:
        if self.annealed and total_steps > 0:
            self.settings.train_keep_rate = cosine_keep_rate(step / total_steps, self.keep_rate,
                                                             float(self.cfg.anneal_start), float(self.cfg.anneal_end))

    # ------------------------------------------------------------------ figures
    def tokens(self, keep_rate: float | None = None) -> list[int]:
        """Non-special tokens entering the model and leaving each reorganising block."""
        keep = self.keep_rate if keep_rate is None else keep_rate
        geo = self.geometry
        sched = token_schedule(geo.num_patches, geo.depth, self.reorg_layers, keep, self.settings.fuse)
        return [geo.num_patches] + [sched[i][1] for i in self.reorg_layers]

    def gmacs(self, keep_rate: float | None = None) -> float:
        keep = self.keep_rate if keep_rate is None else keep_rate
        return macs(self.geometry, self.reorg_layers, keep, self.settings.fuse) / 1e9

    def metrics(self) -> dict[str, float]:
        if self.geometry is None:
            return {}
        return {"evit_keep_rate": self.settings.train_keep_rate if self.cfg.train else self.keep_rate,
                "gmacs": self.gmacs(), "gmacs_stock": self.gmacs(1.0)}

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self.geometry is None:
            return {}
        row = {"reorg_layers": ",".join(str(i) for i in self.reorg_layers),
               "tokens": "→".join(str(n) for n in self.tokens()),
               "fuse": self.settings.fuse, "gmacs": round(self.gmacs(), 4), "gmacs_stock": round(self.gmacs(1.0), 4)}
        return {"EViT token reorganisation": {f"keep {self.keep_rate:g}": row}}

    # ------------------------------------------------------------------ evaluation points
    def eval_points(self, points: list) -> list[tuple[str, dict[str, Any]]]:
        """Keep rates to score one by one: eval.points if given, else method.eval_keep_rates."""
        rates = [check_keep_rate(r, "eval.points") for r in (points or self.cfg.eval_keep_rates or [])]
        return [(f"keep {r:g}", {"keep_rate": r}) for r in rates]

    def set_eval_point(self, model: nn.Module, point: dict[str, Any]) -> dict[str, Any]:
        rate = self.settings.keep_rate = float(point["keep_rate"])
        return {"keep_rate": rate, "tokens": "→".join(str(n) for n in self.tokens(rate)),
                "gmacs": self.gmacs(rate), "macs_ratio": self.gmacs(1.0) / self.gmacs(rate)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"train_keep_rate": self.settings.train_keep_rate, "keep_rate": self.keep_rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_keep_rate" in state:
            self._resumed_keep = float(state["train_keep_rate"])
            self.settings.train_keep_rate = self._resumed_keep

    # ------------------------------------------------------------------ export
    def export_settings(self) -> dict[str, Any]:
        return {"method": "evit", "keep_rate": self.keep_rate, "reorg_layers": self.reorg_layers,
                "fuse": self.settings.fuse, "renormalize": self.settings.renormalize,
                "num_special_tokens": self.settings.num_special,
                "tokens": self.tokens() if self.geometry else None,
                "gmacs": self.gmacs() if self.geometry else None, "config": config_dict(self.cfg)}

    def export(self, model: nn.Module, path: Path) -> Path:
        """A stock HF folder (the patch changes no weights) + evit.json + a model card."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        settings = self.export_settings()
        (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        layers = ", ".join(str(i) for i in self.reorg_layers)
        (path / "README.md").write_text(
            f"# EViT-fine-tuned {model.config.model_type} classifier\n\n"
            f"Stock Hugging Face weights (`from_pretrained` loads them as an ordinary model). They were trained\n"
            f"with EViT token reorganisation (arXiv 2202.07800) at keep rate {settings['keep_rate']:g}, at\n"
            f"0-based blocks {layers} ({'fusing' if settings['fuse'] else 'dropping'} the inattentive tokens); "
            f"{SETTINGS_FILE} holds\nthe settings and sparsetune's `evit` method re-applies them "
            f"(`sparsetune eval run=RUN_DIR`).\n\n"
            f"Tokens per reorganising block: {' → '.join(str(n) for n in settings['tokens'])}; "
            f"{settings['gmacs']:.4f} GMACs per image.\n")
        return path

    def load_export(self, model: nn.Module, path: Path) -> nn.Module | None:
        """The exported weights on the stock class, with the saved EViT settings re-applied (frozen)."""
        path = Path(path)
        file = path / SETTINGS_FILE
        if not file.exists():
            return None
        saved = json.loads(file.read_text())
        loaded = type(model).from_pretrained(path, dtype=next(model.parameters()).dtype)
        self.keep_rate = self.settings.keep_rate = check_keep_rate(saved["keep_rate"], str(file))
        self.settings.fuse = bool(saved["fuse"])
        self.settings.renormalize = bool(saved.get("renormalize", False))
        self.cfg.reorg_layers = list(saved["reorg_layers"])
        self.cfg.train = False
        return self.apply(loaded, MethodContext.of(loaded))
