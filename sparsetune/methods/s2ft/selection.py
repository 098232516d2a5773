"""Which heads and channels S²FT trains: budgets, importance scores and the selection itself.

Four kinds of trainable unit, each tied to one projection of a block:
  o: a query head      -> o_proj input columns  [h*hd, (h+1)*hd)
  v: a kv-group        -> v_proj output rows    [g*hd, (g+1)*hd)   (whole groups, so GQA stays intact)
  d: an FFN channel    -> down_proj input column c
  u: an FFN channel    -> up_proj output row c
A `Selection` lists, per kind and layer, the chosen unit ids in the stock (unpermuted) model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sparsetune.errors import ConfigError
from sparsetune.models.arch import expand_roles

if TYPE_CHECKING:
    from torch import nn

    from sparsetune.models.arch import Arch, Block

KINDS = ("o", "v", "d", "u")
# kind -> (block part, projection role, slice kind): "col" slices input columns, "row" output rows
KIND_SPEC = {"o": ("attn", "o", "col"), "v": ("attn", "v", "row"), "d": ("mlp", "down", "col"), "u": ("mlp", "up", "row")}
_SEED_OFFSET = {"o": 0, "v": 1, "d": 2, "u": 3}


def kind_module(block: Block, kind: str) -> nn.Module:
    part, role, _ = KIND_SPEC[kind]
    return getattr(getattr(block, part), role)


@dataclass
class Selection:
    """Per kind: layer -> sorted unit ids (stock coordinates). Plain, JSON-friendly via to_dict()."""

    units: dict[str, dict[int, list[int]]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def get(self, kind: str, layer: int) -> list[int]:
        return self.units.get(kind, {}).get(layer, [])

    def counts(self) -> dict[str, int]:
        return {k: sum(len(v) for v in self.units.get(k, {}).values()) for k in KINDS}

    def layers(self) -> list[int]:
        return sorted({layer for k in KINDS for layer, ids in self.units.get(k, {}).items() if ids})

    def to_dict(self) -> dict:
        return {k: {str(layer): list(ids) for layer, ids in sorted(self.units.get(k, {}).items()) if ids}
                for k in KINDS}

    @classmethod
    def from_dict(cls, data: dict) -> Selection:
        return cls({k: {int(layer): sorted(int(i) for i in ids) for layer, ids in (data.get(k) or {}).items()}
                    for k in KINDS})


@dataclass
class Geometry:
    """Shapes that budgets depend on; built from an Arch or by hand (e.g. LLaMA2-7B without weights)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    shapes: dict[str, tuple[int, int]]  # role -> (in_features, out_features) of one block's linear

    @classmethod
    def from_arch(cls, arch: Arch) -> Geometry:
        b = arch.blocks[0]
        roles = {"q": b.attn.q, "k": b.attn.k, "v": b.attn.v, "o": b.attn.o, "up": b.mlp.up, "down": b.mlp.down}
        if b.mlp.gate is not None:
            roles["gate"] = b.mlp.gate
        return cls(arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.head_dim, b.mlp.up.out_features,
                   {r: (m.in_features, m.out_features) for r, m in roles.items()})

    @classmethod
    def llama(cls, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int,
              head_dim: int | None = None) -> Geometry:
        hd = head_dim or hidden // heads
        shapes = {"q": (hidden, heads * hd), "k": (hidden, kv_heads * hd), "v": (hidden, kv_heads * hd),
                  "o": (heads * hd, hidden), "gate": (hidden, intermediate), "up": (hidden, intermediate),
                  "down": (intermediate, hidden)}
        return cls(layers, heads, kv_heads, hd, intermediate, shapes)

    def units(self, kind: str) -> int:
        """Units of `kind` in one layer."""
        return {"o": self.num_heads, "v": self.num_kv_heads, "d": self.intermediate_size,
                "u": self.intermediate_size}[kind]

    def unit_cost(self, kind: str) -> int:
        """Trainable parameters one unit adds."""
        return {"o": self.shapes["o"][1] * self.head_dim, "v": self.head_dim * self.shapes["v"][0],
                "d": self.shapes["down"][1], "u": self.shapes["up"][0]}[kind]

    def params(self, counts: dict[str, int]) -> int:
        return sum(counts.get(k, 0) * self.unit_cost(k) for k in KINDS)


def lora_params(geo: Geometry, rank: int, modules: Iterable[str]) -> int:
    """Parameters LoRA of rank `rank` trains on `modules` (role or *_proj names) in every block."""
    total = 0
    for name, role in ((n, role) for n in modules for role in expand_roles([n], geo.shapes)):
        if role not in geo.shapes:
            raise ConfigError(f"method.match_lora_modules: '{name}' is not a linear of this model's blocks; "
                              f"available: {', '.join(geo.shapes)}")
        fan_in, fan_out = geo.shapes[role]
        total += rank * (fan_in + fan_out)
    return total * geo.num_layers


def budget_from_ratios(geo: Geometry, ratios: dict[str, float]) -> dict[str, int]:
    """Units per kind for the whole model: round(ratio x layers x units-per-layer)."""
    return {k: min(int(round(ratios.get(k, 0.0) * geo.num_layers * geo.units(k))), geo.num_layers * geo.units(k))
            for k in KINDS}


def budget_from_lora(geo: Geometry, ratios: dict[str, float], rank: int, modules: Iterable[str]) -> dict[str, int]:
    """Scale the ratios so trainable params match LoRA's; channels (finest unit) absorb the remainder."""
    target = lora_params(geo, rank, modules)
    weight = {k: ratios.get(k, 0.0) * geo.num_layers * geo.units(k) * geo.unit_cost(k) for k in KINDS}
    if sum(weight.values()) <= 0:
        raise ConfigError("method.match_lora_rank needs at least one positive ratio to share the budget")
    share = {k: target * w / sum(weight.values()) for k, w in weight.items()}
    fine = [k for k in ("d", "u") if weight[k] > 0]
    coarse = [k for k in ("o", "v") if weight[k] > 0]
    counts = {k: 0 for k in KINDS}
    if not fine:  # only heads/groups: nearest whole units
        for k in coarse:
            counts[k] = int(round(share[k] / geo.unit_cost(k)))
    else:
        for k in coarse:
            counts[k] = int(round(share[k] / geo.unit_cost(k)))
        left = target - geo.params(counts)
        fine_total = sum(share[k] for k in fine)
        for k in fine:
            counts[k] = max(0, int(left * share[k] / fine_total) // geo.unit_cost(k))
        k = fine[0]  # one more channel if that lands closer to the target
        if abs(target - geo.params(counts) - geo.unit_cost(k)) < abs(target - geo.params(counts)):
            counts[k] += 1
    for k in KINDS:
        available = geo.num_layers * geo.units(k)
        if counts[k] > available:
            raise ConfigError(f"method.match_lora_rank={rank}: needs {counts[k]} '{k}' units but the model has "
                              f"only {available}; lower the rank or raise the other ratios")
    return counts


# ---------------------------------------------------------------------------------------------------------
# importance scores: kind -> tensor [num_layers, units]


def weight_scores(arch: Arch, kinds: Iterable[str]) -> dict[str, torch.Tensor]:
    """Frobenius norm of each unit's slice of the weight it would train."""
    hd = arch.head_dim
    out = {}
    for kind in kinds:
        rows = []
        for b in arch.blocks:
            w = kind_module(b, kind).weight.detach().float()
            rows.append(_unit_norms(w, kind, hd))
        out[kind] = torch.stack(rows)
    return out


def _unit_norms(w: torch.Tensor, kind: str, hd: int) -> torch.Tensor:
    """Per-unit L2 norm of a squared-sum-able tensor laid out like the weight (or its gradient)."""
    sq = w.pow(2)
    if kind == "o":
        return sq.sum(0).view(-1, hd).sum(1).sqrt()
    if kind == "v":
        return sq.sum(1).view(-1, hd).sum(1).sqrt()
    if kind == "d":
        return sq.sum(0).sqrt()
    return sq.sum(1).sqrt()  # u


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def activation_scores(model: nn.Module, arch: Arch, batches: Iterable[dict], kinds: Iterable[str]) -> dict[str, torch.Tensor]:
    """RMS activation per unit over calibration tokens: the input a column slice reads, the output a row slice writes."""
    kinds = list(kinds)
    hd = arch.head_dim
    sums = {k: [None] * arch.num_layers for k in kinds}
    counts = {k: [0] * arch.num_layers for k in kinds}
    handles = []

    def hook(kind: str, layer: int):
        def fn(_module, inputs, output):
            t = (inputs[0] if KIND_SPEC[kind][2] == "col" else output).detach().float()
            t = t.reshape(-1, t.shape[-1])
            sq = t.pow(2).sum(0)
            sums[kind][layer] = sq if sums[kind][layer] is None else sums[kind][layer] + sq
            counts[kind][layer] += t.shape[0]
        return fn

    for kind in kinds:
        for b in arch.blocks:
            handles.append(kind_module(b, kind).register_forward_hook(hook(kind, b.index)))
    device = _model_device(model)
    try:
        with torch.no_grad():
            for batch in batches:
                model(**_to_device(batch, device))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for kind in kinds:
        rows = []
        for layer in range(arch.num_layers):
            if sums[kind][layer] is None:
                raise ConfigError("method.selection=activation: no calibration batches were given")
            ms = sums[kind][layer] / max(counts[kind][layer], 1)
            rows.append(ms.view(-1, hd).sum(1).sqrt() if kind in ("o", "v") else ms.sqrt())
        out[kind] = torch.stack(rows)
    return out


def _loss(model: nn.Module, batch: dict) -> torch.Tensor:
    outputs = model(**batch)
    if getattr(outputs, "loss", None) is not None:
        return outputs.loss
    logits = outputs.logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def gradient_scores(model: nn.Module, arch: Arch, batches: Iterable[dict], kinds: Iterable[str]) -> dict[str, torch.Tensor]:
    """Norm of the loss gradient on each unit's weight slice, summed over calibration batches."""
    kinds = list(kinds)
    weights = {(k, b.index): kind_module(b, k).weight for k in kinds for b in arch.blocks}
    params = list(dict.fromkeys(weights.values()))
    flags = {id(p): p.requires_grad for p in model.parameters()}
    sq = {key: None for key in weights}
    device = _model_device(model)
    was_training = model.training
    model.eval()  # no dropout while scoring
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        seen = 0
        for batch in batches:
            grads = torch.autograd.grad(_loss(model, _to_device(batch, device)), params, allow_unused=True)
            by_param = {id(p): g for p, g in zip(params, grads)}
            for key, w in weights.items():
                g = by_param[id(w)]
                g2 = torch.zeros_like(w, dtype=torch.float32) if g is None else g.float().pow(2)
                sq[key] = g2 if sq[key] is None else sq[key] + g2
            seen += 1
        if not seen:
            raise ConfigError("method.selection=gradient: no calibration batches were given")
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    hd = arch.head_dim
    return {k: torch.stack([_unit_norms(sq[(k, layer)].sqrt(), k, hd) for layer in range(arch.num_layers)])
            for k in kinds}


# ---------------------------------------------------------------------------------------------------------
# selection


def _generator(seed: int, kind: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 7919 + _SEED_OFFSET[kind])


def _per_layer_counts(total: int, layers: int, units: int, gen: torch.Generator) -> list[int]:
    base, extra = divmod(total, layers)
    counts = [min(base, units)] * layers
    for layer in torch.randperm(layers, generator=gen)[:extra].tolist():
        counts[layer] = min(counts[layer] + 1, units)
    return counts


def select(geo: Geometry, counts: dict[str, int], allocation: str = "global", seed: int = 0,
           scores: dict[str, torch.Tensor] | None = None, order: str = "largest", first_layer: int = 0) -> Selection:
    """Pick `counts[kind]` units of each kind among blocks `first_layer`.. (the top ones): uniformly at
    random, or by the top (or bottom) scores."""
    sel = Selection()
    for kind in KINDS:
        n = int(counts.get(kind, 0))
        if n <= 0:
            continue
        layers, units = geo.num_layers - first_layer, geo.units(kind)
        if n > layers * units:
            where = f"the top {layers} blocks have" if first_layer else "the model has"
            raise ConfigError(f"method: asked for {n} '{kind}' units but {where} {layers * units}")
        gen = _generator(seed, kind)
        score = None if scores is None or kind not in scores else scores[kind].float()[first_layer:]
        if score is not None and order == "smallest":
            score = -score
        chosen: dict[int, list[int]] = {}
        if allocation == "global":
            if score is None:
                flat = torch.randperm(layers * units, generator=gen)[:n]
            else:
                flat = torch.argsort(score.reshape(-1), descending=True, stable=True)[:n]
            for f in flat.tolist():
                chosen.setdefault(f // units, []).append(f % units)
        else:
            for layer, k in enumerate(_per_layer_counts(n, layers, units, gen)):
                if k == 0:
                    continue
                if score is None:
                    ids = torch.randperm(units, generator=gen)[:k]
                else:
                    ids = torch.argsort(score[layer], descending=True, stable=True)[:k]
                chosen[layer] = ids.tolist()
        sel.units[kind] = {first_layer + layer: sorted(ids) for layer, ids in sorted(chosen.items())}
    return sel
