"""Hidden-channel importance for prune-then-finetune baselines and PAT's frozen-mask ablation.

magnitude: L2 norm of every weight that touches the channel (embedding column, q/k/v/gate/up input
columns, o/down output rows, an untied lm_head column). activation: RMS of the residual stream in
that channel over calibration tokens and all layers. Either picks the channels `prune_hidden` keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sparsetune.models.arch import get_arch

from .mask import top_n
from .merge import base_of, effective_weight

KINDS = ("magnitude", "activation")


@torch.no_grad()
def hidden_importance(model: nn.Module, arch=None, batches: Iterable[dict] | None = None,
                      kind: str = "magnitude") -> torch.Tensor:
    """A (hidden,) float32 CPU score per hidden channel; larger = more important."""
    live = get_arch(base_of(model))
    if kind == "magnitude":
        score = effective_weight(live.embed)[0].pow(2).sum(0)
        if not live.tied_embeddings and live.head is not None:
            score += effective_weight(live.head)[0].pow(2).sum(0)
        for b in live.blocks:
            for lin in (b.attn.q, b.attn.k, b.attn.v, b.mlp.gate, b.mlp.up):
                if lin is not None:
                    score += effective_weight(lin)[0].pow(2).sum(0).to(score)
            for lin in (b.attn.o, b.mlp.down):
                score += effective_weight(lin)[0].pow(2).sum(1).to(score)
        return score.sqrt().float().cpu()
    if kind == "activation":
        if batches is None:
            raise ValueError("activation importance needs calibration batches")
        device = next(model.parameters()).device
        total, count = None, 0.0
        was_training = model.training
        model.eval()
        for batch in batches:
            ids = batch["input_ids"].to(device)
            att = batch.get("attention_mask")
            att = torch.ones_like(ids) if att is None else att.to(device)
            out = model(input_ids=ids, attention_mask=att, output_hidden_states=True)
            w = att.float()[..., None]
            for h in out.hidden_states:
                s = (h.float().pow(2) * w).sum((0, 1))
                total = s if total is None else total + s
                count += float(w.sum())
        model.train(was_training)
        if total is None:
            raise ValueError("activation importance got no batches")
        return (total / max(count, 1.0)).sqrt().cpu()
    raise ValueError(f"importance kind '{kind}' is not one of {KINDS}")


def top_channels(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The n highest-scoring channels, ascending (ties to the lower index)."""
    return top_n(scores, n)
