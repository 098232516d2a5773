"""Full fine-tuning: every parameter trains (the upper-bound baseline every paper compares against)."""

from __future__ import annotations

from sparsetune.methods.base import Method, MethodConfig


class FullFineTune(Method):
    strategies = ("ddp", "fsdp")
    config_class = MethodConfig

    def apply(self, model, ctx):
        self.ctx = ctx
        for p in model.parameters():
            p.requires_grad_(True)
        return model
