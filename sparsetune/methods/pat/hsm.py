"""Hybrid Sparsification Modules and the wrapper that puts one on a residual-stream write.

An HSM maps a write x (the output of o_proj, down_proj or the token embedding) to
    y = s * M * (x + L1 L0 x)      (lowrank; L0: d->r kaiming, L1: r->d zero, so y = x at init)
    y = s * M * (D x)              (dense; D = I at init)
    y = s * M * x                  (diag; the tied-embedding HSM, see method.py)
with a per-HSM channel scale s (init 1) and the globally shared gate M (mask.py). The wrapper keeps the
Hugging Face forward untouched: it calls the original module (plain, or a PEFT LoRA layer) and then the
HSM, so PEFT's own merging still sees its layer under `<name>.inner`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mask import SharedMask

HSM_VARIANTS = ("lowrank", "dense", "diag")


class HSM(nn.Module):
    def __init__(self, hidden: int, rank: int = 200, kind: str = "lowrank"):
        super().__init__()
        if kind not in HSM_VARIANTS:
            raise ValueError(f"HSM kind '{kind}' is not one of {HSM_VARIANTS}")
        self.kind, self.hidden, self.rank = kind, hidden, rank if kind == "lowrank" else 0
        self.s = nn.Parameter(torch.ones(hidden))
        if kind == "lowrank":
            self.L0 = nn.Parameter(torch.empty(rank, hidden))
            nn.init.kaiming_uniform_(self.L0, a=math.sqrt(5))  # nn.Linear's default, as the reference
            self.L1 = nn.Parameter(torch.zeros(hidden, rank))
        elif kind == "dense":
            self.D = nn.Parameter(torch.eye(hidden))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        if self.kind == "lowrank":
            x = x + F.linear(F.linear(x, self.L0.to(dt)), self.L1.to(dt))
        elif self.kind == "dense":
            x = F.linear(x, self.D.to(dt))
        return x * (self.s * gate).to(dt)

    @property
    def has_matrix(self) -> bool:
        return self.kind != "diag"

    def identity_loss(self, with_l1: bool = True) -> torch.Tensor:
        """||L0 L0^T - I||^2 (+ ||L1^T L1 - I||^2, the paper; the reference has only the first), as mean
        squared errors like the reference; dense: ||D D^T - I||^2."""
        if self.kind == "lowrank":
            eye = torch.eye(self.rank, device=self.L0.device)
            l0 = self.L0.float()
            loss = F.mse_loss(l0 @ l0.T, eye)
            if with_l1:
                l1 = self.L1.float()
                loss = loss + F.mse_loss(l1.T @ l1, eye)
            return loss
        if self.kind == "dense":
            d = self.D.float()
            return F.mse_loss(d @ d.T, torch.eye(self.hidden, device=d.device))
        return self.s.new_zeros((), dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, kind={self.kind}, rank={self.rank}"


class ResidualWrite(nn.Module):
    """`inner` (o_proj / down_proj / embed_tokens, possibly PEFT-wrapped) followed by an HSM."""

    def __init__(self, inner: nn.Module, hsm: HSM, mask: SharedMask, role: str):
        super().__init__()
        self.inner = inner
        self.hsm = hsm
        self.role = role  # "o" | "down" | "embed"
        self._mask = (mask,)  # a tuple, so the shared mask is not registered once per HSM

    @property
    def mask(self) -> SharedMask:
        return self._mask[0]

    def forward(self, *args, **kwargs):
        return self.hsm(self.inner(*args, **kwargs), self.mask.gate())

    def __getattr__(self, name: str):
        """Fall through to the wrapped module (weight, in_features, num_embeddings, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("inner", "hsm", "_mask"):
                raise
            return getattr(self.inner, name)


def wrap(parent: nn.Module, attr: str, hsm: HSM, mask: SharedMask, role: str) -> ResidualWrite:
    """Replace parent.<attr> (dotted) by a ResidualWrite around it."""
    *path, last = attr.split(".")
    for part in path:
        parent = getattr(parent, part)
    wrapper = ResidualWrite(getattr(parent, last), hsm, mask, role)
    setattr(parent, last, wrapper)
    return wrapper


def residual_writes(model: nn.Module) -> list[ResidualWrite]:
    return [m for m in model.modules() if isinstance(m, ResidualWrite)]
