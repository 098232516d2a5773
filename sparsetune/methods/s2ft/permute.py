"""Function-preserving co-permutation that gathers the selected heads/channels into contiguous slices.

Heads: query heads permute q rows, o columns and the q bias; kv-groups permute k/v rows and biases.
Under grouped-query attention a query head must stay with its kv-group, so we permute whole groups
and then heads inside each group (RoPE and per-head q/k norms act inside a head, so they are
unaffected). Channels permute gate/up rows (and biases) and down columns.

A permutation is stored as `new position -> stock index`; `invert` maps back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn

    from sparsetune.models.arch import Arch, Block

    from .selection import Selection


@dataclass
class LayerPermutation:
    heads: list[int] | None = None  # new query-head position -> stock query head
    groups: list[int] | None = None  # new kv-group position -> stock kv-group
    channels: list[int] | None = None  # new FFN channel position -> stock channel

    def to_dict(self) -> dict:
        return {"heads": self.heads, "groups": self.groups, "channels": self.channels}

    @classmethod
    def from_dict(cls, d: dict) -> LayerPermutation:
        return cls(d.get("heads"), d.get("groups"), d.get("channels"))


def invert(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for new, old in enumerate(perm):
        inv[old] = new
    return inv


def expand(perm: list[int], width: int) -> torch.Tensor:
    """Unit permutation -> row/column permutation for units `width` wide (head_dim for heads)."""
    p = torch.as_tensor(perm, dtype=torch.long)
    return (p[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


def plan_heads(o_heads: list[int], v_groups: list[int], num_heads: int, num_kv: int) -> tuple[list[int], list[int]]:
    """Group order A (v only), B (v and o), C (o only), D (rest), so trained v-groups are contiguous and the
    trained o-heads are contiguous whenever at most one partially selected group sits on each side."""
    gs = num_heads // num_kv
    o_set, v_set = set(o_heads), set(v_groups)
    n_o = {g: sum(1 for h in range(g * gs, (g + 1) * gs) if h in o_set) for g in range(num_kv)}
    a = [g for g in range(num_kv) if g in v_set and n_o[g] == 0]
    b = sorted((g for g in range(num_kv) if g in v_set and n_o[g] > 0), key=lambda g: n_o[g])
    c = sorted((g for g in range(num_kv) if g not in v_set and n_o[g] > 0), key=lambda g: -n_o[g])
    d = [g for g in range(num_kv) if g not in v_set and n_o[g] == 0]
    groups = a + b + c + d
    run = b + c
    heads = []
    for g in groups:
        members = list(range(g * gs, (g + 1) * gs))
        picked = [h for h in members if h in o_set]
        rest = [h for h in members if h not in o_set]
        heads += rest + picked if run and g == run[0] else picked + rest
    return heads, groups


def plan_channels(d_channels: list[int], u_channels: list[int], n: int) -> list[int]:
    """Order d-only, both, u-only, rest: both the down columns and the up rows become contiguous."""
    d_set, u_set = set(d_channels), set(u_channels)
    return ([c for c in range(n) if c in d_set and c not in u_set] + [c for c in range(n) if c in d_set and c in u_set]
            + [c for c in range(n) if c in u_set and c not in d_set] + [c for c in range(n) if c not in d_set | u_set])


def plan(selection: Selection, arch: Arch) -> dict[int, LayerPermutation]:
    """One permutation per block that has trained units (identity blocks are left out)."""
    perms = {}
    for b in arch.blocks:
        i = b.index
        o, v, dd, u = (selection.get(k, i) for k in ("o", "v", "d", "u"))
        p = LayerPermutation()
        if o or v:
            p.heads, p.groups = plan_heads(o, v, b.attn.num_heads, b.attn.num_kv_heads)
        if dd or u:
            p.channels = plan_channels(dd, u, b.mlp.up.out_features)
        if p.heads is not None or p.channels is not None:
            perms[i] = p
    return perms


def _reindex_(param: nn.Parameter | None, dim: int, index: torch.Tensor) -> None:
    if param is None:
        return
    with torch.no_grad():
        param.copy_(param.index_select(dim, index.to(param.device)))


def permute_block(block: Block, perm: LayerPermutation, inverse: bool = False) -> None:
    """Permute one block's weights in place; `inverse` undoes `perm`."""
    attn, mlp = block.attn, block.mlp
    if perm.heads is not None:
        heads = invert(perm.heads) if inverse else perm.heads
        groups = invert(perm.groups) if inverse else perm.groups
        gs = attn.group_size
        assert all(perm.heads[p] // gs == perm.groups[p // gs] for p in range(len(perm.heads))), \
            "head permutation splits a kv-group"
        qi, gi = expand(heads, attn.head_dim), expand(groups, attn.head_dim)
        _reindex_(attn.q.weight, 0, qi)
        _reindex_(attn.q.bias, 0, qi)
        _reindex_(attn.o.weight, 1, qi)
        for lin in (attn.k, attn.v):
            _reindex_(lin.weight, 0, gi)
            _reindex_(lin.bias, 0, gi)
    if perm.channels is not None:
        ci = torch.as_tensor(invert(perm.channels) if inverse else perm.channels, dtype=torch.long)
        for lin in (mlp.gate, mlp.up):
            if lin is not None:
                _reindex_(lin.weight, 0, ci)
                _reindex_(lin.bias, 0, ci)
        _reindex_(mlp.down.weight, 1, ci)


def permute_model(arch: Arch, perms: dict[int, LayerPermutation], inverse: bool = False) -> None:
    for b in arch.blocks:
        if b.index in perms:
            permute_block(b, perms[b.index], inverse=inverse)


def unit_positions(perm: list[int] | None, selected: list[int]) -> list[int]:
    """Where the selected stock units sit after permuting (sorted new positions)."""
    if perm is None:
        return sorted(selected)
    where = invert(perm)
    return sorted(where[s] for s in selected)
