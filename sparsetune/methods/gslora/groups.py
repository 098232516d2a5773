"""Parameter groups for group sparsity, the group-lasso penalty and its proximal step.

A group is a list of LoRA matrices: per block (the paper: every adapter in one Transformer block),
per module (A and B of one linear) or per matrix. The subgradient of sum_g ||g|| never reaches
exact zeros (the reference's gap); the proximal block soft-threshold does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsetune.errors import ConfigError

GROUPINGS = ("block", "module", "matrix")


@dataclass
class Group:
    name: str
    params: list[torch.nn.Parameter]

    def norm(self) -> torch.Tensor:
        return torch.sqrt(sum((p.float() ** 2).sum() for p in self.params))


def build_groups(targets: dict[str, tuple], wrapped: dict, grouping: str) -> list[Group]:
    """Groups over the adapters in `wrapped` ({name: LoRALinear}); `targets` gives block and role."""
    if grouping not in GROUPINGS:
        raise ConfigError(f"method.groups: unknown grouping '{grouping}'; available: {', '.join(GROUPINGS)}")
    groups: dict[str, list] = {}
    for name, wrapper in wrapped.items():
        block, role, _ = targets[name]
        if grouping == "block":
            groups.setdefault(f"block{block}", []).extend([wrapper.lora_A, wrapper.lora_B])
        elif grouping == "module":
            groups[f"block{block}.{role}"] = [wrapper.lora_A, wrapper.lora_B]
        else:
            groups[f"block{block}.{role}.A"] = [wrapper.lora_A]
            groups[f"block{block}.{role}.B"] = [wrapper.lora_B]
    return [Group(n, ps) for n, ps in groups.items()]


def group_lasso(groups: list[Group]) -> torch.Tensor:
    """sum_g ||g||_2 (the paper's L_structure before alpha). An all-zero group contributes 0 with
    subgradient 0 (sqrt's derivative at 0 would give NaN)."""
    total = groups[0].params[0].new_zeros((), dtype=torch.float32) if groups else torch.zeros(())
    for g in groups:
        sq = sum((p.float() ** 2).sum() for p in g.params)
        if float(sq.detach()) > 0:
            total = total + torch.sqrt(sq)
    return total


@torch.no_grad()
def proximal_step(groups: list[Group], threshold: float, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """g <- g * max(0, 1 - threshold / ||g||): the prox of threshold * ||g||_2. Groups at or below
    the threshold become exactly zero (their Adam momentum too, so it cannot revive them);
    returns the names of the zeroed groups."""
    zeroed = []
    for g in groups:
        norm = float(g.norm())
        if norm <= threshold:
            for p in g.params:
                p.zero_()
                state = optimizer.state.get(p, {}) if optimizer is not None else {}
                if "exp_avg" in state:
                    state["exp_avg"].zero_()
            zeroed.append(g.name)
        elif threshold > 0:
            for p in g.params:
                p.mul_(1.0 - threshold / norm)
    return zeroed


@torch.no_grad()
def snap_to_zero(groups: list[Group], below: float) -> list[str]:
    """Set every group whose norm is below `below` x the largest group norm exactly to zero; returns
    their names. The paper's subgradient drives unneeded groups to ~0.03% of the needed ones (Adam
    keeps them hovering at about the learning rate), never to exact zeros: snapping them before the
    merge makes "zeroed" literal. Relative, so it does not depend on the adapter's scale."""
    norms = [float(g.norm()) for g in groups]
    cut = below * max(norms, default=0.0)
    gone = []
    for g, norm in zip(groups, norms):
        if norm < cut:
            for p in g.params:
                p.zero_()
            gone.append(g.name)
    return gone


@torch.no_grad()
def surviving(groups: list[Group], tol: float = 0.0) -> dict[str, float]:
    """{group name: norm} of the groups whose norm is at least `tol` and non-zero (exactly non-zero
    by default)."""
    norms = {g.name: float(g.norm()) for g in groups}
    return {n: v for n, v in norms.items() if v > 0 and v >= tol}
