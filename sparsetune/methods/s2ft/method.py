"""S²FT as a sparsetune Method: select units, optionally co-permute, wrap the trained linears, freeze the rest."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetune.errors import ConfigError
from sparsetune.methods.base import Method, config_dict
from sparsetune.models.arch import get_arch

from .adapter import FILENAME, AdapterSlice, S2FTAdapter, _set_module, fingerprint
from .config import S2FTConfig
from .layers import S2FTLinear
from .permute import LayerPermutation, expand, invert, permute_model, plan, unit_positions
from .selection import (
    KIND_SPEC,
    KINDS,
    Geometry,
    Selection,
    activation_scores,
    budget_from_lora,
    budget_from_ratios,
    gradient_scores,
    kind_module,
    select,
    weight_scores,
)

_PERM_FIELD = {"o": "heads", "v": "groups", "d": "channels", "u": "channels"}


def _reentrant_checkpointing(block: nn.Module) -> bool:
    """True when HF checkpoints this block with the reentrant variant (it needs an input requiring grad)."""
    if not (getattr(block, "gradient_checkpointing", False) and block.training and torch.is_grad_enabled()):
        return False
    fn = getattr(block, "_gradient_checkpointing_func", None)
    return bool((getattr(fn, "keywords", None) or {}).get("use_reentrant", True))


def _detach_hidden(block, args, kwargs):
    """Forward pre-hook: the block's input carries no graph, so backprop stops here.

    Reentrant checkpointing drops gradients of a block whose inputs do not require grad, so there
    the input becomes a fresh leaf that requires grad (the graph is still cut below it).
    """
    def cut(t: torch.Tensor) -> torch.Tensor:
        return t.detach().requires_grad_(t.requires_grad and _reentrant_checkpointing(block))

    if args and torch.is_tensor(args[0]):
        args = (cut(args[0]), *args[1:])
    elif torch.is_tensor(kwargs.get("hidden_states")):
        kwargs = {**kwargs, "hidden_states": cut(kwargs["hidden_states"])}
    return args, kwargs


class S2FT(Method):
    """Structured sparse fine-tuning (arXiv 2412.06289) with partial backprop and adapter export."""

    config_class = S2FTConfig
    stock_export = False  # export/ is {module, indices, delta} slices; merged = the deltas fused
    no_peft_reason = "its update is a set of dense row/column slices (no low-rank factors)"

    def __init__(self, cfg: S2FTConfig):
        super().__init__(cfg)
        self.selection: Selection | None = None
        self.permutation: dict[int, LayerPermutation] | None = None
        self.base_model = ""
        self.base_fingerprint = ""
        self.scores: dict[str, torch.Tensor] | None = None
        self.modules: dict[str, tuple[int, str]] = {}  # wrapped module name -> (layer, kind)
        self.head_dim = 0
        self._hook = None

    # ------------------------------------------------------------------ selection
    def ratios(self) -> dict[str, float]:
        return {k: float(getattr(self.cfg, f"{k}_ratio")) for k in KINDS}

    def budget(self, geo: Geometry) -> dict[str, int]:
        """Units per kind for the whole model (from the ratios, or matched to a LoRA rank)."""
        if self.cfg.match_lora_rank:
            return budget_from_lora(geo, self.ratios(), int(self.cfg.match_lora_rank), list(self.cfg.match_lora_modules))
        return budget_from_ratios(geo, self.ratios())

    @property
    def needs_calibration(self) -> bool:
        """True when apply() needs data: calibrate() first, or the engine's `calibration_batches` hook."""
        return self.cfg.selection in ("activation", "gradient") and self.selection is None and self.scores is None

    def calibrate(self, model: nn.Module, batches: Iterable[dict], arch=None) -> None:
        """Score units on up to `calibration_batches` batches (dicts of model inputs; labels optional)."""
        arch = arch or get_arch(model)
        kinds = [k for k, r in self.ratios().items() if r > 0]
        batches = list(itertools.islice(batches, int(self.cfg.calibration_batches)))
        if self.cfg.selection == "activation":
            self.scores = activation_scores(model, arch, batches, kinds)
        elif self.cfg.selection == "gradient":
            self.scores = gradient_scores(model, arch, batches, kinds)
        elif self.cfg.selection == "weight":
            self.scores = weight_scores(arch, kinds)

    def _select(self, arch) -> Selection:
        geo = Geometry.from_arch(arch)
        counts = self.budget(geo)
        scores = None
        if self.cfg.selection == "weight":
            scores = self.scores or weight_scores(arch, [k for k in KINDS if counts[k]])
        elif self.cfg.selection in ("activation", "gradient"):
            batches = self.ctx.calibration_batches if self.ctx is not None else None
            if self.scores is None and batches is not None:  # the engine's training batches
                self.calibrate(arch.model, batches(int(self.cfg.calibration_batches)), arch)
            if self.scores is None:
                raise ConfigError(f"method.selection={self.cfg.selection} needs calibration batches: "
                                  "call calibrate(model, batches) before apply()")
            scores = self.scores
        first = geo.num_layers - max(1, round(float(self.cfg.top_fraction) * geo.num_layers))
        return select(geo, counts, self.cfg.allocation, int(self.cfg.seed), scores, self.cfg.selection_order, first)

    # ------------------------------------------------------------------ apply
    def apply(self, model: nn.Module, ctx) -> nn.Module:
        self.ctx, arch = ctx, ctx.arch
        if self.modules:
            raise RuntimeError("S2FT.apply was already called; build a new S2FT for another model")
        self.base_model = str(getattr(model.config, "_name_or_path", "") or "")
        self.base_fingerprint = fingerprint(model)
        self.head_dim = arch.head_dim
        if self.selection is None:
            self.selection = self._select(arch)
        counts = self.selection.counts()
        if self.permutation is None:
            permute = self.cfg.permute if self.cfg.permute is not None else bool(counts["v"] or counts["u"])
            self.permutation = plan(self.selection, arch) if permute else {}
        permute_model(arch, self.permutation)

        for p in model.parameters():
            p.requires_grad_(False)
        names = {id(m): n for n, m in model.named_modules()}
        dtype = getattr(torch, self.cfg.optimizer_dtype)
        for b in arch.blocks:
            lp = self.permutation.get(b.index)
            for kind in KINDS:
                units = self.selection.get(kind, b.index)
                if not units:
                    continue
                perm = getattr(lp, _PERM_FIELD[kind]) if lp is not None else None
                width = arch.head_dim if kind in ("o", "v") else 1
                idx = expand(unit_positions(perm, units), width)
                module = kind_module(b, kind)
                name = names[id(module)]
                _set_module(model, name, S2FTLinear(module, KIND_SPEC[kind][2], idx, dtype=dtype))
                self.modules[name] = (b.index, kind)
        if self.cfg.stop_at_lowest_trained_layer and self.selection.layers():
            lowest = arch.blocks[self.selection.layers()[0]].module
            self._hook = lowest.register_forward_pre_hook(_detach_hidden, with_kwargs=True)
        return model

    def slice_modules(self, model: nn.Module) -> dict[str, S2FTLinear]:
        return {n: m for n, m in model.named_modules() if isinstance(m, S2FTLinear)}

    def parameter_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Only the slice deltas (weight decay pulls Δ toward 0, i.e. toward the base weights)."""
        params = [m.delta for m in self.slice_modules(model).values() if m.delta.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"{n}.delta": m.delta.detach() for n, m in self.slice_modules(model).items()}

    def metrics(self) -> dict[str, float]:
        if self.selection is None:
            return {}
        c = self.selection.counts()
        return {"s2ft_heads": c["o"], "s2ft_kv_groups": c["v"], "s2ft_down_channels": c["d"], "s2ft_up_channels": c["u"]}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "selection": None if self.selection is None else self.selection.to_dict(),
            "permutation": None if self.permutation is None
            else {str(k): v.to_dict() for k, v in self.permutation.items()},
            "base_model": self.base_model,
            "fingerprint": self.base_fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the selection and permutation; call before apply() so resuming re-selects nothing."""
        sel = None if state.get("selection") is None else Selection.from_dict(state["selection"])
        perm = state.get("permutation")
        perm = None if perm is None else {int(k): LayerPermutation.from_dict(v) for k, v in perm.items()}
        if self.modules and (sel is None or sel.to_dict() != self.selection.to_dict()):
            raise RuntimeError("S2FT.load_state_dict after apply() with a different selection; load it before apply()")
        self.selection, self.permutation = sel, perm
        self.base_model = state.get("base_model", self.base_model)
        self.base_fingerprint = state.get("fingerprint", self.base_fingerprint)

    # ------------------------------------------------------------------ export
    def _stock_indices(self, layer: int, kind: str, module: S2FTLinear) -> torch.Tensor:
        lp = (self.permutation or {}).get(layer)
        perm = getattr(lp, _PERM_FIELD[kind]) if lp is not None else None
        idx = module.indices.cpu()
        if perm is None:
            return idx
        width = self.head_dim if kind in ("o", "v") else 1
        return expand(perm, width)[idx]

    def to_adapter(self, model: nn.Module) -> S2FTAdapter:
        """The trained update as an adapter in stock (unpermuted) coordinates, indices sorted."""
        slices = {}
        for name, module in self.slice_modules(model).items():
            layer, kind = self.modules[name]
            stock = self._stock_indices(layer, kind, module)
            order = torch.argsort(stock)
            delta = module.delta.detach().cpu().index_select(module.slice_dim, order)
            slices[name] = AdapterSlice(module.kind, stock[order], delta)
        meta = {"selection": self.selection.to_dict() if self.selection else {},
                "permutation": self.state_dict()["permutation"], "config": config_dict(self.cfg)}
        return S2FTAdapter(slices, self.base_model, self.base_fingerprint, meta)

    def export(self, model: nn.Module, path: Path) -> Path:
        """Write `path/adapter.safetensors` (applies to a stock base; see S2FTAdapter)."""
        path = Path(path)
        self.to_adapter(model).save(path)
        return path

    def merged_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A stock-layout state dict: Δ merged into W and the co-permutation undone (model untouched)."""
        sd = {k: v for k, v in model.state_dict().items() if not k.endswith(".delta")}
        for name, module in self.slice_modules(model).items():
            sd[f"{name}.weight"] = module.merged_weight()
        if not self.permutation:
            return sd
        arch = get_arch(model)
        names = {id(m): n for n, m in model.named_modules()}
        for b in arch.blocks:
            lp = self.permutation.get(b.index)
            if lp is None:
                continue
            edits = []  # (module, dim, stock <- new index)
            if lp.heads is not None:
                qi = expand(invert(lp.heads), arch.head_dim)
                gi = expand(invert(lp.groups), arch.head_dim)
                edits += [(b.attn.q, 0, qi), (b.attn.o, 1, qi), (b.attn.k, 0, gi), (b.attn.v, 0, gi)]
            if lp.channels is not None:
                ci = torch.as_tensor(invert(lp.channels), dtype=torch.long)
                edits += [(b.mlp.up, 0, ci), (b.mlp.down, 1, ci)] + ([(b.mlp.gate, 0, ci)] if b.mlp.gate is not None else [])
            for module, dim, index in edits:
                name = names[id(module)]
                for pname in ("weight", "bias"):
                    key = f"{name}.{pname}"
                    if key in sd and (pname == "weight" or dim == 0):
                        sd[key] = sd[key].index_select(dim, index.to(sd[key].device))
        return sd

    def export_merged(self, model: nn.Module, path: Path) -> Path:
        """Save a stock Hugging Face model folder with the update merged in."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, state_dict=self.merged_state_dict(model))
        return path

    def merge_and_unpermute(self, model: nn.Module, arch=None) -> nn.Module:
        """In place: fold Δ into W, restore plain nn.Linears and the stock layout (ends training)."""
        for name, module in self.slice_modules(model).items():
            _set_module(model, name, module.unwrap(merge=True))
        if self.permutation:
            permute_model(arch or get_arch(model), self.permutation, inverse=True)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.modules = {}
        return model

    def load_export(self, model: nn.Module, path: Path) -> nn.Module | None:
        """Fuse the exported adapter into a stock base (fingerprint-checked), as a user would."""
        if not (Path(path) / FILENAME).exists():
            return None
        return S2FTAdapter.load(path).apply_to(model, fuse=True)

    def prepare_for_eval(self, model: nn.Module) -> nn.Module:
        """The forward already includes Δ; nothing to merge."""
        return model
