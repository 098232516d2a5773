"""Token counts and multiply-accumulates of a (reorganised) ViT/DeiT forward, counted analytically.

MACs per image: patch embedding, per block q/k/v/o projections (4·N·D²), attention scores and
weighted values (2·N²·D), MLP (2·N·D·I), plus EViT's own work at a reorganising block (the class
row q_cls·Kᵀ: N·D; the fusion: n·D); layernorms, softmax, GELU and the classifier are left out
(under 0.1% for DeiT-S). DeiT-S stock: 4.6 GMACs, the paper's figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layers import kept_count


@dataclass(frozen=True)
class Geometry:
    num_patches: int
    num_special: int
    depth: int
    hidden: int
    intermediate: int
    patch_macs: int  # patch embedding per patch: C·p²·D

    @classmethod
    def from_config(cls, config, num_special: int) -> Geometry:
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        return cls(num_patches=(size // patch) ** 2, num_special=num_special, depth=config.num_hidden_layers,
                   hidden=config.hidden_size, intermediate=config.intermediate_size,
                   patch_macs=config.num_channels * patch * patch * config.hidden_size)


def token_schedule(num_patches: int, depth: int, reorg_layers: list[int], keep_rate: float,
                   fuse: bool = True) -> list[tuple[int, int]]:
    """Non-special tokens (into attention, into the MLP) of each block."""
    n, out = num_patches, []
    for i in range(depth):
        before = n
        if i in reorg_layers:
            k = kept_count(keep_rate, n)
            n = k + (1 if fuse and k < n else 0)
        out.append((before, n))
    return out


def macs(geo: Geometry, reorg_layers: list[int], keep_rate: float, fuse: bool = True) -> int:
    """Multiply-accumulates per image."""
    d, total = geo.hidden, geo.num_patches * geo.patch_macs
    for i, (n_in, n_out) in enumerate(token_schedule(geo.num_patches, geo.depth, reorg_layers, keep_rate, fuse)):
        a, m = n_in + geo.num_special, n_out + geo.num_special
        total += 4 * a * d * d + 2 * a * a * d + 2 * m * d * geo.intermediate
        if i in reorg_layers and n_out != n_in:
            total += a * d + n_in * d  # class-attention row + fusion
    return total
