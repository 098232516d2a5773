"""A minimal LoRA linear that can be merged into its base weight and removed explicitly.

Own module rather than PEFT: each forgetting task attaches a fresh adapter, merges it and detaches
it, and the group-sparsity code needs direct access to every A/B matrix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsetune.errors import ConfigError
from sparsetune.models.arch import expand_roles


class LoRALinear(nn.Module):
    """y = base(x) + scale * B(A(x)); B starts at zero so the wrapped model is unchanged at start."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def target_linears(arch, roles: list[str], layers: list[int] | None) -> dict[str, tuple[int, str, nn.Linear]]:
    """{dotted name: (block index, role, linear)} for the roles in the chosen blocks, via arch."""
    known = arch.linear_names()
    roles = expand_roles(roles, known)
    bad = [r for r in roles if r not in known]
    if bad or not roles:
        raise ConfigError(f"method.target_modules: {bad or roles} not linears of a {arch.family} block; "
                          f"available: {', '.join(known)}")
    chosen = range(arch.num_layers) if layers is None else list(layers)
    out = [i for i in chosen if not 0 <= i < arch.num_layers]
    if out:
        raise ConfigError(f"method.layers: {out} outside 0..{arch.num_layers - 1}")
    found = {}
    for i in chosen:
        block = arch.blocks[i]
        roles_to_mod = block.linears()
        for role in roles:
            found[arch.name_of(roles_to_mod[role])] = (i, role, roles_to_mod[role])
    return found


def attach(model: nn.Module, linears: dict[str, tuple[int, str, nn.Linear]], r: int,
           alpha: float) -> dict[str, LoRALinear]:
    """Wrap each linear in a fresh LoRALinear (in place); returns {name: wrapper}."""
    wrapped = {}
    for name, (_, _, linear) in linears.items():
        wrapper = LoRALinear(linear, r, alpha)
        _set_child(model, name, wrapper)
        wrapped[name] = wrapper
    return wrapped


@torch.no_grad()
def merge(model: nn.Module, wrapped: dict[str, LoRALinear]) -> None:
    """Fold every adapter into its base weight and put the plain linear back."""
    for name, wrapper in wrapped.items():
        wrapper.base.weight += wrapper.delta().to(wrapper.base.weight.dtype)
        _set_child(model, name, wrapper.base)
