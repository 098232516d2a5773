"""Vision data sets as in-memory uint8 tensors, split into train / val / held-out test.

Every source ends up as one `uint8[N, C, H, W]` tensor plus int64 labels; `ImageDataset` normalises
on the fly, so memory stays at one byte per pixel (a 60k Fashion-MNIST pool is 47 MB). The held-out
test part is the official test split where the source has one (Fashion-MNIST t10k); otherwise it is
carved with `test_size`. Validation is always carved from train with `split_seed` and is what model
selection uses; `train_size` then caps the remaining training pool with a seeded subset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from sparsetune.data import vision_sources as src
from sparsetune.data.images import RawImages, as_uint8_nchw  # noqa: F401 (re-exported)
from sparsetune.data.types import Splits
from sparsetune.errors import DataError


class ImageDataset(Dataset):
    """uint8 images normalised per item; `targets` holds every label (forgetting filters on it)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], class_names: Optional[list[str]] = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W]")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = targets.to(torch.long)
        channels = images.shape[1]
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(channels, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(channels, 1, 1)
        self.class_names = list(class_names or [])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels = self.images[index].to(torch.float32).div_(255.0)
        return {"pixel_values": (pixels - self.mean) / self.std, "labels": int(self.targets[index])}

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageDataset:
        """A dataset over the given rows (same normalisation and class names)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[idx], self.targets[idx], self.mean.flatten().tolist(),
                            self.std.flatten().tolist(), self.class_names)

    def with_classes(self, classes: Sequence[int], keep: bool = True) -> ImageDataset:
        """Only the rows whose label is (keep=True) or is not (keep=False) in `classes`."""
        hit = torch.isin(self.targets, torch.as_tensor(list(classes), dtype=torch.long))
        return self.subset(torch.nonzero(hit if keep else ~hit).flatten())


def readers() -> dict[str, Callable[[Any], RawImages]]:
    """Vision source name -> reader (PIL and scikit-learn are imported by a reader when it is used)."""
    return {
        "fashion_mnist": src.read_fashion_mnist,
        "mnist5k": src.read_mnist5k,
        "digits": src.read_digits,
        "cifar10": src.read_cifar10,
        "image_folder": src.read_image_folder,
    }


def load_vision_splits(data_cfg: Any) -> Splits:
    """Read `data_cfg.source`, resize to `image_size`, split; returns Splits(kind="vision")."""
    known = readers()
    source = getattr(data_cfg, "source", None)
    if source not in known:
        raise DataError(f"data.source: unknown vision source '{source}'; available: {', '.join(sorted(known))}")
    raw = known[source](data_cfg)
    size = getattr(data_cfg, "image_size", None)
    train_x = resize_uint8(raw.train_images, size)
    test_x = resize_uint8(raw.test_images, size) if raw.test_images is not None else None
    return make_splits(train_x, raw.train_labels, raw.class_names, test_x, raw.test_labels,
                       val_size=int(getattr(data_cfg, "val_size", 0) or 0),
                       train_size=getattr(data_cfg, "train_size", None),
                       test_size=int(getattr(data_cfg, "test_size", 0) or 0),
                       seed=int(getattr(data_cfg, "split_seed", 0) or 0),
                       mean=raw.mean, std=raw.std)


def make_splits(images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                test_images: Optional[torch.Tensor] = None, test_labels: Optional[torch.Tensor] = None, *,
                val_size: int = 0, train_size: Optional[int] = None, test_size: int = 0, seed: int = 0,
                mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Splits:
    """Split a train pool: test (only when no official test split), then val, then cap train.

    One seeded permutation of the pool decides all three, so the parts are disjoint and the same
    seed always gives the same parts whatever `train_size` is.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    carve_test = test_images is None
    n_test = min(test_size, n) if carve_test else 0
    if n_test + val_size >= n:
        raise DataError(f"val_size={val_size} (+ test_size={n_test}) leaves no training images out of {n}")
    test_idx, val_idx, train_idx = order[:n_test], order[n_test:n_test + val_size], order[n_test + val_size:]
    if mean is None or std is None:  # from everything but the carved test rows, before the train cap
        mean, std = channel_stats(images[order[n_test:]] if n_test else images)
    if train_size is not None:
        train_idx = train_idx[: int(train_size)]
    full = ImageDataset(images, labels, mean, std, class_names)
    if carve_test:
        test = full.subset(test_idx)
    else:
        test = ImageDataset(test_images, torch.as_tensor(test_labels), mean, std, class_names)
    num_classes = len(class_names) if class_names else int(labels.max()) + 1
    return Splits(kind="vision", train=full.subset(train_idx), val=full.subset(val_idx), test=test,
                  num_classes=num_classes, class_names=list(class_names))


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units (chunked so a large pool stays uint8 in memory)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.clamp_min(1e-3).tolist()


def resize_uint8(images: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """Bilinear resize of uint8 [N, C, H, W] to size x size (no-op when size is None/0 or already so)."""
    if not size or tuple(images.shape[-2:]) == (size, size):
        return images
    out = []
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096].to(torch.float32)
        chunk = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear",
                                                align_corners=False, antialias=True)
        out.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)
