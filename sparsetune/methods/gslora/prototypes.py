"""Per-class prototypes for GS-LoRA++, recomputed from the available data at each task start.

`on="logits"` (default) averages the classifier logits of each class; `on="embeddings"` averages
the classifier's input (the CLS embedding after the final norm; DeiT: the CLS head's input). The
paper's face model has an embedding backbone and a CosFace head, so its prototypes are embeddings;
an HF classifier exposes logits directly and the KL terms read more naturally on class
distributions, hence the default. Both go through the same softmax-KL (losses.kl_to_prototype).

Classes forgotten in an earlier task are absent from a later task's data, but (with
`forget.revisit_earlier`) still in its forgotten half. They keep the prototype computed when the model
last knew them (`carry_over`): the push term then keeps them away from where they used to sit. A
zero row instead would compare against a uniform distribution u, which is no target in either KL
order: in the reference's, KL(u || p_f) = -ln K - mean_k log p_f,k is large for any confident output,
the forgotten class's own included, so a sample still predicted as its class would meet the hinge;
in the earlier order, KL(p_f || u) <= ln K < BND_pro never meets it (a permanent "be confident" term).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsetune.errors import ConfigError

SOURCES = ("logits", "embeddings")


class HeadInput:
    """Forward hook on the classifier head that keeps its latest input (the pooled embedding)."""

    def __init__(self, head: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = head.register_forward_hook(self._grab)

    def _grab(self, module, inputs, output) -> None:
        self.value = inputs[0]

    def remove(self) -> None:
        self.handle.remove()


def features(outputs, capture: HeadInput | None, on: str) -> torch.Tensor:
    """The representation prototypes live in, for the forward pass that just ran."""
    if on == "logits":
        return outputs.logits
    if on == "embeddings":
        return capture.value
    raise ConfigError(f"method.proto_on: unknown '{on}'; available: {', '.join(SOURCES)}")


@torch.no_grad()
def class_prototypes(model: nn.Module, batches, num_classes: int, on: str, capture: HeadInput | None,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """([num_classes, D] mean representation per class over `batches` ({"pixel_values", "labels"}),
    [num_classes] bool: which classes had samples). Rows of absent classes are zero."""
    training = model.training
    model.eval()
    sums, counts = None, torch.zeros(num_classes)
    try:
        for batch in batches:
            out = model(pixel_values=batch["pixel_values"].to(device))
            feats = features(out, capture, on).float().cpu()
            if sums is None:
                sums = torch.zeros(num_classes, feats.shape[-1])
            sums.index_add_(0, batch["labels"], feats)
            counts += torch.bincount(batch["labels"], minlength=num_classes).float()
    finally:
        model.train(training)
    return sums / counts.clamp_min(1).unsqueeze(1), counts > 0


def carry_over(new: torch.Tensor, new_known: torch.Tensor, old: torch.Tensor | None,
               old_known: torch.Tensor | None, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`new` with the rows of `classes` (earlier-forgotten) taken from `old`, the prototypes of the
    previous task start, which reach back to when each class was last known."""
    if old is None or not classes:
        return new, new_known
    rows = torch.tensor(classes, dtype=torch.long)
    new, new_known = new.clone(), new_known.clone()
    new[rows] = old[rows].to(new)
    new_known[rows] = old_known[rows].to(new_known.device)
    return new, new_known
