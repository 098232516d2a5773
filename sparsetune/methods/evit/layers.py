"""The EViT patch for stock HF ViT/DeiT encoder layers: a class swap, no copied modeling file.

A reorganising layer runs the stock layer's own modules (layernorms, q/k/v/o projections, the
configured attention kernel — SDPA by default — dropout, MLP) and, between attention and MLP,
reorganises the tokens:

- the class token's attention row is computed on its own, softmax(q_cls · Kᵀ · scale) in fp32 from
  the same q/k the main attention used, so the main attention never materialises its N×N weights;
- non-class tokens are ranked by that row averaged over heads; the top ceil(keep · n) are kept;
- the others are fused into one token x_fuse = Σ a_i x_i over the dropped tokens (the paper's raw
  class-attention weights a_i; `renormalize` divides by Σ a_i) appended after the kept tokens, or
  dropped (`fuse=False`).

Special tokens (the class token, and DeiT's distillation token) stay first, in place, and are never
scored or fused. With keep 1.0 (or when ceil(keep · n) = n) the layer runs the stock forward exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.deit.modeling_deit import DeiTLayer
from transformers.models.vit.modeling_vit import ViTLayer, eager_attention_forward


@dataclass
class EViTSettings:
    """Shared by all patched layers of one model (a plain object: not part of the state dict)."""

    keep_rate: float = 1.0  # in eval mode
    train_keep_rate: float = 1.0  # in train mode (the annealed schedule)
    fuse: bool = True
    renormalize: bool = False
    num_special: int = 1  # class token (+ DeiT's distillation token)
    record: bool = False  # keep the last class-attention row and kept indices on the layer (tests, plots)


def kept_count(keep_rate: float, n: int) -> int:
    """ceil(keep · n) with the product rounded to 1e-6 first (0.7 · 100 is 70.00000000000001 in floats)."""
    return min(n, max(1, math.ceil(round(float(keep_rate) * n, 6))))


def cls_attention(query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """The class token's attention over all tokens, averaged over heads: (B, N) in fp32.

    query, key: (B, heads, N, head_dim) as the attention module builds them; only query row 0 is used.
    """
    q0 = query[:, :, :1, :].float()
    scores = torch.matmul(q0, key.float().transpose(-1, -2)) * scaling  # (B, H, 1, N)
    return scores.softmax(dim=-1).mean(dim=1).squeeze(1)


def reorganize(hidden: torch.Tensor, cls_attn: torch.Tensor, keep_rate: float, num_special: int,
               fuse: bool = True, renormalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(new hidden states, kept token indices among the non-special tokens).

    hidden: (B, N, D) after the attention residual; cls_attn: (B, N) from `cls_attention`.
    Returns [special tokens, top-k tokens by score (descending), fused token if `fuse`].
    """
    b, n, d = hidden.shape
    tokens = hidden[:, num_special:]
    scores = cls_attn[:, num_special:]
    k = kept_count(keep_rate, n - num_special)
    idx = scores.topk(k, dim=1, largest=True, sorted=True).indices  # (B, k)
    kept = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
    parts = [hidden[:, :num_special], kept]
    if fuse and k < n - num_special:
        weights = scores.scatter(1, idx, 0.0)  # the dropped tokens' attention, 0 for kept ones
        if renormalize:
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
        parts.append(torch.bmm(weights.unsqueeze(1).to(hidden.dtype), tokens))  # (B, 1, D)
    return torch.cat(parts, dim=1), idx


class EViTLayerMixin:
    """forward() of a reorganising ViT/DeiT layer; `evit` holds the model's EViTSettings."""

    evit: EViTSettings
    evit_last: dict[str, torch.Tensor] | None = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
                ) -> torch.Tensor:
        s = self.evit
        keep = s.train_keep_rate if self.training else s.keep_rate
        n_tokens = hidden_states.shape[1] - s.num_special
        if kept_count(keep, n_tokens) >= n_tokens:
            return super().forward(hidden_states, attention_mask, **kwargs)  # the stock layer, exactly
        if attention_mask is not None:
            raise ValueError("EViT token reorganisation does not support an attention_mask")

        # self-attention, as the stock layer does it, keeping q and k for the class-attention row
        residual = hidden_states
        h = self.layernorm_before(hidden_states)
        attn = self.attention
        hidden_shape = (*h.shape[:-1], -1, attn.head_dim)
        query = attn.q_proj(h).view(hidden_shape).transpose(1, 2)
        key = attn.k_proj(h).view(hidden_shape).transpose(1, 2)
        value = attn.v_proj(h).view(hidden_shape).transpose(1, 2)
        interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                                    eager_attention_forward)
        out, _ = interface(attn, query, key, value, None, dropout=attn.attention_dropout if attn.training else 0.0,
                           scaling=attn.scaling, **kwargs)
        out = attn.o_proj(out.reshape(*h.shape[:-1], -1).contiguous())
        hidden_states = self.dropout(out) + residual

        cls_attn = cls_attention(query, key, attn.scaling)
        hidden_states, idx = reorganize(hidden_states, cls_attn, keep, s.num_special, s.fuse, s.renormalize)
        if s.record:
            self.evit_last = {"cls_attn": cls_attn.detach(), "kept": idx.detach()}

        residual = hidden_states
        h = self.layernorm_after(hidden_states)
        return self.dropout(self.mlp(h)) + residual


class EViTViTLayer(EViTLayerMixin, ViTLayer):
    """A ViTLayer that reorganises tokens (same parameters and names: the state dict is stock)."""


class EViTDeiTLayer(EViTLayerMixin, DeiTLayer):
    """A DeiTLayer that reorganises tokens (same parameters and names: the state dict is stock)."""


_PATCHED = {ViTLayer: EViTViTLayer, DeiTLayer: EViTDeiTLayer}
_STOCK = {v: k for k, v in _PATCHED.items()}


def patch_layer(layer: nn.Module, settings: EViTSettings) -> None:
    """Turn a stock ViTLayer/DeiTLayer into a reorganising one in place (class swap; weights untouched)."""
    cls = type(layer)
    if cls in _STOCK:
        layer.evit = settings
        return
    if cls not in _PATCHED:
        raise TypeError(f"EViT patches ViTLayer/DeiTLayer, not {cls.__name__}")
    layer.__class__ = _PATCHED[cls]
    layer.evit = settings


def unpatch_layer(layer: nn.Module) -> None:
    """Back to the stock class (the weights never changed)."""
    cls = type(layer)
    if cls in _STOCK:
        layer.__class__ = _STOCK[cls]
        for name in ("evit", "evit_last"):
            layer.__dict__.pop(name, None)


def is_patched(layer: nn.Module) -> bool:
    return type(layer) in _STOCK
