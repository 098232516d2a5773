"""S²FT adapters: {module name, indices, delta} on a stock base model, and how to serve them.

An adapter lives in one safetensors file (`<module>.indices`, `<module>.delta`) whose metadata names
the base model, a fingerprint of its weights, the slice kinds, and the training-time selection and
permutation (for provenance; indices are always in stock, unpermuted coordinates).

Serving:
- `apply_to(model, fuse=True)` adds Δ into W in place, remembering the overwritten slice, so
  `remove_from` restores the base bit for bit and `switch` A→B→A gives A back exactly.
- `apply_to(model, fuse=False)` wraps the linears in S2FTLinear instead (W untouched).
- `MixedAdapterModel` serves a batch whose rows use different adapters: rows are grouped by adapter
  and each group adds its own small slice product (memory stays O(slice), not O(batch x weight)).
- `S2FTAdapter.combine` fuses adapters (weighted sum of deltas on the union of indices).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparsetune.errors import UserError
from sparsetune.models.arch import get_arch

from .layers import COL, S2FTLinear

FORMAT = "sparsetune.s2ft"
VERSION = "1"
FILENAME = "adapter.safetensors"
_STACK_ATTR = "_s2ft_applied"


def fingerprint(model: nn.Module, samples: int = 1024) -> str:
    """Hash of strided samples (rounded to bf16) of weights S²FT never trains: embeddings, q, k, gate.

    Rounding to bf16 makes fp32 and bf16 loads of one checkpoint agree; q/k/gate are permuted by
    S²FT's co-permutation, so a permuted training model does not pass for the stock base.
    """
    arch = get_arch(model)
    tensors = [arch.embed.weight]
    for b in arch.blocks:
        tensors += [b.attn.q.weight, b.attn.k.weight] + ([b.mlp.gate.weight] if b.mlp.gate is not None else [])
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        h.update(flat[::step][:samples].to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:20]


@dataclass
class AdapterSlice:
    kind: str  # "col" (input columns) | "row" (output rows)
    indices: torch.Tensor  # sorted, stock coordinates
    delta: torch.Tensor  # [out, k] (col) or [k, in] (row)

    @property
    def dim(self) -> int:
        return 1 if self.kind == COL else 0


def _stack(model: nn.Module) -> list:
    if _STACK_ATTR not in model.__dict__:
        model.__dict__[_STACK_ATTR] = []
    return model.__dict__[_STACK_ATTR]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise UserError(f"adapter module '{name}' does not exist in this model") from None
    if not isinstance(module, nn.Linear):
        raise UserError(f"adapter module '{name}' is a {type(module).__name__}, not a plain nn.Linear "
                        "(remove the adapter already applied there first)")
    return module


@dataclass
class S2FTAdapter:
    slices: dict[str, AdapterSlice]
    base_model: str = ""
    fingerprint: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".safetensors":
            path.mkdir(parents=True, exist_ok=True)
            path = path / FILENAME
        tensors = {}
        for name, s in self.slices.items():
            tensors[f"{name}.indices"] = s.indices.detach().to("cpu", torch.long).contiguous()
            tensors[f"{name}.delta"] = s.delta.detach().cpu().contiguous()
        meta = {"format": FORMAT, "version": VERSION, "base_model": self.base_model, "fingerprint": self.fingerprint,
                "kinds": json.dumps({n: s.kind for n, s in self.slices.items()})}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in self.metadata.items()})
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> S2FTAdapter:
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.exists():
            raise UserError(f"no S2FT adapter at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT:
                raise UserError(f"{path} is not a sparsetune S2FT adapter (format={meta.get('format')!r})")
            kinds = json.loads(meta["kinds"])
            slices = {n: AdapterSlice(k, f.get_tensor(f"{n}.indices"), f.get_tensor(f"{n}.delta"))
                      for n, k in kinds.items()}
        extra = {}
        for k, v in meta.items():
            if k in ("format", "version", "base_model", "fingerprint", "kinds"):
                continue
            try:
                extra[k] = json.loads(v)
            except json.JSONDecodeError:
                extra[k] = v
        return cls(slices, meta.get("base_model", ""), meta.get("fingerprint", ""), extra)

    # ------------------------------------------------------------------ facts
    def num_params(self) -> int:
        return sum(s.delta.numel() for s in self.slices.values())

    def check_base(self, model: nn.Module) -> None:
        """Refuse a base model whose weights differ from the one the adapter was trained on."""
        if self.fingerprint and fingerprint(model) != self.fingerprint:
            raise UserError(f"adapter was trained on base '{self.base_model}' (fingerprint {self.fingerprint}); "
                            "this model's weights differ (pass check=False to apply anyway)")

    # ------------------------------------------------------------------ apply / remove
    def apply_to(self, model: nn.Module, fuse: bool = True, check: bool = True) -> nn.Module:
        """Add this adapter to `model` in place (fused into W, or as S2FTLinear wrappers)."""
        if check:
            self.check_base(model)
        backups: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, s in self.slices.items():
                lin = _linear(model, name)
                idx = s.indices.to(lin.weight.device)
                if fuse:
                    old = lin.weight.index_select(s.dim, idx)
                    backups[name] = old
                    acc = torch.promote_types(old.dtype, torch.float32)
                    new = old.to(acc) + s.delta.to(device=lin.weight.device, dtype=acc)
                    lin.weight.index_copy_(s.dim, idx, new.to(lin.weight.dtype))
                else:
                    _set_module(model, name, S2FTLinear(lin, s.kind, idx, delta=s.delta, dtype=s.delta.dtype,
                                                        trainable=False))
        _stack(model).append((self, fuse, backups))
        return model

    def remove_from(self, model: nn.Module) -> nn.Module:
        """Undo `apply_to` exactly; adapters stacked on one model come off in reverse order."""
        stack = _stack(model)
        if not stack or stack[-1][0] is not self:
            raise UserError("this adapter is not the last one applied to the model; remove adapters in reverse order")
        _, fused, backups = stack.pop()
        with torch.no_grad():
            for name, s in self.slices.items():
                module = model.get_submodule(name)
                if fused:
                    module.weight.index_copy_(s.dim, s.indices.to(module.weight.device), backups[name])
                else:
                    _set_module(model, name, module.unwrap(merge=False))
        return model

    # ------------------------------------------------------------------ fusion
    @classmethod
    def combine(cls, adapters: Sequence[S2FTAdapter], weights: Sequence[float] | None = None) -> S2FTAdapter:
        """Adapter fusion: Σ wᵢ Δᵢ on the union of indices (weights default to 1: disjoint slices add up)."""
        if not adapters:
            raise ValueError("combine needs at least one adapter")
        weights = list(weights) if weights is not None else [1.0] * len(adapters)
        prints = {a.fingerprint for a in adapters if a.fingerprint}
        if len(prints) > 1:
            raise UserError("cannot combine adapters trained on different base models")
        names = list(dict.fromkeys(n for a in adapters for n in a.slices))
        out = {}
        for name in names:
            parts = [(a.slices[name], w) for a, w in zip(adapters, weights) if name in a.slices]
            kinds = {s.kind for s, _ in parts}
            if len(kinds) > 1:
                raise UserError(f"adapters disagree on the slice kind of '{name}'")
            kind = kinds.pop()
            union = torch.unique(torch.cat([s.indices.long() for s, _ in parts]))  # sorted
            ref = parts[0][0].delta
            dim = 1 if kind == COL else 0
            shape = list(ref.shape)
            shape[dim] = union.numel()
            delta = torch.zeros(shape, dtype=torch.float32)
            for s, w in parts:
                delta.index_add_(dim, torch.searchsorted(union, s.indices.long()), s.delta.float() * w)
            out[name] = AdapterSlice(kind, union, delta.to(ref.dtype))
        first = adapters[0]
        return cls(out, first.base_model, first.fingerprint, {"combined_from": len(adapters), "weights": weights})


def switch(model: nn.Module, current: S2FTAdapter | None, new: S2FTAdapter | None, check: bool = False) -> nn.Module:
    """Swap the fused adapter `current` for `new` in place; only the slices are touched."""
    if current is not None:
        current.remove_from(model)
    if new is not None:
        new.apply_to(model, fuse=True, check=check)
    return model


class MixedAdapterModel(nn.Module):
    """One base model serving a batch where row i uses adapter `adapter_ids[i]` (-1: the bare base)."""

    def __init__(self, model: nn.Module, adapters: Sequence[S2FTAdapter], check: bool = True):
        super().__init__()
        self.model = model
        self.adapters = list(adapters)
        if check:
            for a in self.adapters:
                a.check_base(model)
        self._rows: dict[int, torch.Tensor] | None = None
        self._batch = 0
        self._handles = []
        names = list(dict.fromkeys(n for a in self.adapters for n in a.slices))
        for name in names:
            lin = _linear(model, name)
            dev, dtype = lin.weight.device, lin.weight.dtype
            entries = [(i, a.slices[name].kind, a.slices[name].indices.to(dev),
                        a.slices[name].delta.to(device=dev, dtype=dtype))
                       for i, a in enumerate(self.adapters) if name in a.slices]
            self._handles.append(lin.register_forward_hook(self._hook(entries)))

    def _hook(self, entries):
        def fn(_module, inputs, y):
            if self._rows is None:
                return None
            x = inputs[0]
            if x.shape[0] != self._batch:
                raise ValueError(f"adapter_ids has {self._batch} entries but the layer input has batch {x.shape[0]}")
            for i, kind, idx, delta in entries:
                rows = self._rows.get(i)
                if rows is None:
                    continue
                xa = x.index_select(0, rows)
                if kind == COL:
                    contrib = F.linear(xa.index_select(-1, idx), delta.to(x.dtype))
                else:
                    part = F.linear(xa, delta.to(x.dtype))
                    contrib = part.new_zeros(*part.shape[:-1], y.shape[-1]).index_add_(-1, idx, part)
                y = y.index_add(0, rows, contrib.to(y.dtype))
            return y
        return fn

    def _set_ids(self, adapter_ids: torch.Tensor) -> None:
        ids = torch.as_tensor(adapter_ids).long().reshape(-1)
        if ids.numel() and int(ids.max()) >= len(self.adapters):
            raise ValueError(f"adapter id {int(ids.max())} out of range; {len(self.adapters)} adapters loaded")
        device = next(self.model.parameters()).device
        self._batch = ids.numel()
        self._rows = {i: (ids == i).nonzero().flatten().to(device) for i in ids.unique().tolist() if i >= 0}

    def forward(self, *args, adapter_ids: torch.Tensor, **kwargs):
        self._set_ids(adapter_ids)
        try:
            return self.model(*args, **kwargs)
        finally:
            self._rows = None

    def generate(self, *args, adapter_ids: torch.Tensor, **kwargs):
        """HF generate with per-row adapters (greedy/sampling; the batch dimension must stay B)."""
        self._set_ids(adapter_ids)
        try:
            return self.model.generate(*args, **kwargs)
        finally:
            self._rows = None

    def close(self) -> nn.Module:
        """Remove the hooks and return the untouched base model."""
        for h in self._handles:
            h.remove()
        self._handles = []
        return self.model
