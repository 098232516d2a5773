"""Model selection on validation: keep the trainable state with the best score seen so far.

Used as the loop's periodic `evaluate` hook; the test split never takes part in selection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class BestState:
    """Calls `score_fn(model) -> (score, metrics)`; remembers the best eligible trainable state."""

    def __init__(self, method, score_fn: Callable[[Any], tuple[float, dict[str, float]]],
                 eligible: Callable[[], bool] = lambda: True, name: str = "val"):
        self.method, self.score_fn, self.eligible, self.name = method, score_fn, eligible, name
        self.best_score, self.best_state, self.best_metrics = float("-inf"), None, {}

    def __call__(self, model) -> dict[str, dict[str, float]]:
        score, metrics = self.score_fn(model)
        if self.eligible() and score > self.best_score:
            self.best_score, self.best_metrics = score, metrics
            self.best_state = {k: v.detach().clone() for k, v in self.method.trainable_state_dict(model).items()}
        return {self.name: metrics}

    @torch.no_grad()
    def restore(self, model) -> None:
        params = dict(model.named_parameters())
        for name, value in (self.best_state or {}).items():
            params[name].copy_(value)
