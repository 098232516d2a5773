"""The globally shared hidden-channel mask: its schedule (tau, beta), its losses, and the final top-N.

Soft phase (t < t0): M = sigmoid(tau(t) * m) + beta(t), tau(t) = 1 / (1 - ln t / ln t0) capped at
tau_max, beta(t) = max(0.5 - t / t0, 0); at t = 0 tau = 0 and M = 0.5 + 0.5 = 1 exactly, so the
wrapped model starts equal to the stock model. Hard phase (t >= t0, and always in eval mode): M is
the 0/1 indicator of exactly N channels, the N largest m (ties to the lower index) -- the same set
the export keeps, so training after t0, evaluation and the exported model agree.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def tau_at(t: float, t0: float, tau_max: float) -> float:
    """Mask temperature at step t; 0 at t = 0, 1 at t = 1, -> inf at t0 (capped)."""
    if t <= 0:
        return 0.0
    if t >= t0 or t0 <= 1.0:
        return float(tau_max)
    denom = 1.0 - math.log(t) / math.log(t0)
    return float(min(1.0 / denom, tau_max))


def beta_at(t: float, t0: float) -> float:
    """Additive gate offset: 0.5 at t = 0, linearly down to 0 at t0 / 2."""
    return max(0.5 - t / t0, 0.0) if t0 > 0 else 0.0


def top_n(values: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (ascending) of the n largest values; ties go to the lower index (deterministic)."""
    order = torch.sort(-values.detach().float().cpu(), stable=True).indices
    return torch.sort(order[:n]).values


class _Binarize(torch.autograd.Function):
    """Forward 1[m >= 0], backward the identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, m):
        return (m >= 0).to(m.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def ste_open(m: torch.Tensor) -> torch.Tensor:
    return _Binarize.apply(m)


class SharedMask(nn.Module):
    """One mask vector m for all hidden channels, read by every HSM."""

    def __init__(self, hidden: int, n_keep: int, tau_max: float = 100.0, frozen_keep: torch.Tensor | None = None,
                 frozen_decay: float = 2.77):
        super().__init__()
        self.hidden, self.n_keep, self.tau_max = hidden, int(n_keep), float(tau_max)
        self.m = nn.Parameter(torch.zeros(hidden), requires_grad=frozen_keep is None)
        # frozen-mask ablation: a fixed channel set whose pruned channels fade out before t0
        self.frozen = frozen_keep is not None
        self.frozen_decay = float(frozen_decay)
        if frozen_keep is not None:
            with torch.no_grad():
                self.m.fill_(-0.5)
                self.m[frozen_keep] = 0.5
        self.step, self.t0 = 0, 0.0
        self.keep: torch.Tensor | None = None  # set when the hard phase starts (then never changes)
        self._cache: tuple | None = None

    # ------------------------------------------------------------------ schedule
    def set_step(self, step: int, total_steps: int, t0_fraction: float) -> None:
        self.step = int(step)
        self.t0 = max(float(t0_fraction) * float(total_steps), 1e-9)
        if self.keep is None and self.step >= self.t0:
            self.keep = self.current_keep()

    @property
    def hard(self) -> bool:
        return self.keep is not None

    @property
    def tau(self) -> float:
        return self.tau_max if self.hard else tau_at(self.step, self.t0, self.tau_max) if self.t0 else 0.0

    @property
    def beta(self) -> float:
        if self.hard:
            return 0.0
        return beta_at(self.step, self.t0) if self.t0 else 0.5

    def current_keep(self) -> torch.Tensor:
        """The N channels that would be kept now (the frozen set once the hard phase started)."""
        return self.keep if self.keep is not None else top_n(self.m, self.n_keep)

    def hard_gate(self) -> torch.Tensor:
        """0/1 indicator of the kept channels (cached until m changes: every HSM reads it per forward)."""
        key = (self.m._version, self.m.device, id(self.keep))
        if self._cache is None or self._cache[0] != key:
            gate = torch.zeros(self.hidden, device=self.m.device)
            gate[self.current_keep().to(self.m.device)] = 1.0
            self._cache = (key, gate)
        return self._cache[1]

    def gate(self) -> torch.Tensor:
        """M (d,): soft and differentiable in the training soft phase, the 0/1 top-N gate otherwise."""
        if self.hard or not self.training:
            return self.hard_gate()
        if self.frozen:
            keep = torch.zeros(self.hidden, dtype=torch.bool, device=self.m.device)
            keep[self.m > 0] = True
            fade = math.exp(-self.frozen_decay * self.step / self.t0) if self.t0 else 1.0
            return torch.where(keep, torch.ones_like(self.m), torch.full_like(self.m, fade))
        return torch.sigmoid(self.tau * self.m) + self.beta

    # ------------------------------------------------------------------ losses
    def count_loss(self) -> torch.Tensor:
        """|#(m >= 0) - N| / N with a straight-through gradient."""
        return (ste_open(self.m).sum() - self.n_keep).abs() / self.n_keep

    def polarization_loss(self) -> torch.Tensor:
        """Mean squared distance of the open channels to +0.5 and of the closed ones to -0.5.

        The reference takes `.mean()` of a possibly empty selection (NaN when all m < 0, which
        happens right after the first count-loss step); empty sides contribute 0 here.
        """
        m = self.m
        pos, neg = m > 0, m <= 0
        loss = m.new_zeros(())
        if pos.any():
            loss = loss + ((m[pos] - 0.5) ** 2).mean()
        if neg.any():
            loss = loss + ((m[neg] + 0.5) ** 2).mean()
        return loss

    def stats(self) -> dict[str, float]:
        with torch.no_grad():
            gate = self.gate() if self.training else self.hard_gate()
            return {
                "pat_gate_open": int((self.m > 0).sum()),
                "pat_gate_mean": float(gate.float().mean()),
                "pat_tau": self.tau,
                "pat_beta": self.beta,
                "pat_hard": float(self.hard),
            }

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, keep={self.n_keep}, frozen={self.frozen}"
