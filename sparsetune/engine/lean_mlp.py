"""Gated MLPs (SwiGLU / GeGLU) that keep two of their three wide intermediates for backward.

Stock `down(act(gate(x)) * up(x))` keeps gate(x), act(gate(x)) and up(x) for backward: three
(batch, seq, intermediate) tensors per block, the largest share of a decoder's activation memory
(720 MB of SmolLM2's at 4 x 256). The fused product below keeps gate(x) and up(x) and recomputes the
element-wise activation in backward, which costs one element-wise pass. Values and gradients are
unchanged. Applied to the stock HF MLP modules in place (their forward is rebound on the instance).
"""

from __future__ import annotations

import types

import torch
from torch import nn

# HF MLP classes whose forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x))
GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "GemmaMLP", "Gemma2MLP", "Gemma3MLP"}


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, act):
        ctx.save_for_backward(gate, up)
        ctx.act = act
        return act(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            g = gate.detach().requires_grad_(True)
            a = ctx.act(g)
        grad_up = grad * a.detach() if ctx.needs_input_grad[1] else None
        grad_gate = torch.autograd.grad(a, g, grad * up)[0] if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up, None


def gated_product(gate: torch.Tensor, up: torch.Tensor, act) -> torch.Tensor:
    """act(gate) * up, keeping only gate and up for backward."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return _GatedProduct.apply(gate, up, act)
    return act(gate) * up


def _lean_forward(self, x):
    return self.down_proj(gated_product(self.gate_proj(x), self.up_proj(x), self.act_fn))


def make_mlps_lean(model: nn.Module) -> int:
    """Rebind the forward of every known gated MLP in `model`; returns how many were changed.
    Attribute lookups happen per call, so LoRA / S²FT wrappers on the projections keep working."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in GATED_MLPS and "forward" not in vars(module):
            module.forward = types.MethodType(_lean_forward, module)
            count += 1
    return count
