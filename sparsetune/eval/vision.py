"""Image-classification accuracy: top-1 overall and per class (GS-LoRA's forgotten / retained split
is computed from the per-class figures)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from sparsetune.errors import DataError


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    pixels = torch.stack([torch.as_tensor(it["pixel_values"]) for it in items])
    labels = torch.as_tensor([int(it["labels"]) for it in items], dtype=torch.long)
    return {"pixel_values": pixels, "labels": labels}


def evaluate_vision(model: Any, dataset: Any, batch_size: int, num_classes: int,
                    class_names: Optional[list[str]] = None, device: Any = None) -> dict[str, Any]:
    """{"top1": acc, "per_class": {name: acc}, "n": count} over `dataset` in eval mode.

    Items are {"pixel_values": Tensor[C,H,W], "labels": int}; the model returns `.logits` (HF
    classifiers) or a logits tensor. Classes absent from the data are left out of per_class.
    """
    first = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes")
    correct = torch.zeros(num_classes, dtype=torch.long)
    total = torch.zeros(num_classes, dtype=torch.long)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        loader = DataLoader(dataset, batch_size=max(1, int(batch_size)), shuffle=False, collate_fn=_collate)
        with torch.inference_mode():
            for batch in loader:
                labels = batch["labels"]
                if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                    raise DataError(f"label {int(labels.max())} outside 0..{num_classes - 1}")
                out = model(pixel_values=batch["pixel_values"].to(device=device, dtype=dtype))
                logits = out.logits if hasattr(out, "logits") else out
                pred = logits.argmax(dim=-1).cpu()
                total += torch.bincount(labels, minlength=num_classes)
                correct += torch.bincount(labels[pred == labels], minlength=num_classes)
    finally:
        for module, training in modes:
            module.training = training
    n = int(total.sum())
    per_class = {names[c]: float(correct[c]) / float(total[c]) for c in range(num_classes) if total[c] > 0}
    return {"top1": float(correct.sum()) / n if n else float("nan"), "per_class": per_class, "n": n}
