"""What a vision source reader returns, shared by the readers (vision_sources) and the splitter (vision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class RawImages:
    """What a source reader returns: a train pool, an optional official test split, class names."""

    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor
    class_names: list[str]
    test_images: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None
    mean: Optional[Sequence[float]] = None  # per channel in [0, 1]; None: computed from train + val
    std: Optional[Sequence[float]] = None


def as_uint8_nchw(array: np.ndarray) -> torch.Tensor:
    """[N, H, W] or [N, H, W, C] uint8 numpy -> contiguous uint8 tensor [N, C, H, W]."""
    if array.ndim == 3:
        array = array[:, None, :, :]
    elif array.ndim == 4:
        array = array.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"expected 3 or 4 dims, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))
