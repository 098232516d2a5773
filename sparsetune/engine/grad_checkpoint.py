"""Activation (gradient) checkpointing of decoder / encoder blocks, and a count of what autograd keeps.

Not to be confused with run checkpoints (engine/checkpoint.py). `trainer.gradient_checkpointing=true`
rebinds each block's `forward` (the blocks `arch` knows) to run under
`torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`: the block keeps only its inputs during
forward and recomputes its internals in backward. Being our own wrapper around the block, it works the
same whatever a method did to the block's submodules (PEFT LoRA/DoRA layers, S²FT slice layers and their
partial-backprop autograd Functions, PAT's HSM residual writes, lean MLPs). Non-reentrant checkpointing
also handles blocks whose inputs do not require grad (below S²FT's lowest trained block, or under
`top_fraction`): nothing is recorded there and backward never reaches them.

Module hooks stay outside the checkpoint (S²FT's forward pre-hook that cuts the graph runs once), and the
RNG state is replayed, so dropout masks match. KV caching is switched off while checkpointing (a cache
write would happen twice on the replay).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

from sparsetune.engine.losses import unwrap
from sparsetune.models import get_arch

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")
_ORIGINAL = "_sparsetune_forward_before_checkpointing"


class SavedTensors:
    """Bytes autograd keeps for backward, counted once per distinct storage; the model's own weights
    are excluded (they exist anyway). Blocks under gradient checkpointing keep their inputs instead of
    their internals: those inputs are counted too (see `_record_kept`), so the figure stays honest.

        with SavedTensors(model) as saved:
            loss = ...
        saved.bytes
    """

    _active: list[SavedTensors] = []

    def __init__(self, model: nn.Module | None = None):
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()} if model is not None else set()
        self.storages: dict[int, int] = {}  # a tensor saved by several nodes (or views of it) counts once
        self._hooks = None

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.storages[storage.data_ptr()] = storage.nbytes()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> SavedTensors:
        self.storages.clear()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        SavedTensors._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        SavedTensors._active.remove(self)
        self._hooks.__exit__(*exc)


def _record_kept(tensors: list[torch.Tensor]) -> None:
    """A checkpointed block keeps its tensor arguments alive for the replay: count them."""
    for counter in SavedTensors._active:
        for t in tensors:
            counter.add(t)


def _checkpointed_forward(self, *args, **kwargs):
    forward = getattr(self, _ORIGINAL)
    if not (self.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    tensors = [leaf for leaf in tree_flatten((args, kwargs))[0] if torch.is_tensor(leaf)]
    if not (any(t.requires_grad for t in tensors) or any(p.requires_grad for p in self.parameters())):
        return forward(*args, **kwargs)  # no backward reaches this block (e.g. below S²FT's lowest trained block)
    for key in _CACHE_KWARGS:
        if kwargs.get(key) is not None:
            kwargs[key] = None
    if kwargs.get("use_cache"):
        kwargs["use_cache"] = False
    _record_kept(tensors)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _blocks(model: nn.Module, arch=None) -> list[nn.Module]:
    if arch is None:
        arch = get_arch(unwrap(model))
    return [b.module for b in arch.blocks]


def _text_configs(model: nn.Module) -> Iterator:
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            yield config
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            if text is not config and hasattr(text, "use_cache"):
                yield text


def enable_gradient_checkpointing(model: nn.Module, arch=None) -> int:
    """Checkpoint every block of `model` (non-reentrant) while training; returns how many blocks.

    `arch` (from before a method wrapped the model) names the blocks; without it, `get_arch` is asked.
    Idempotent. Sets `config.use_cache=False`, since a cache cannot be written under checkpointing.
    """
    count = 0
    for block in _blocks(model, arch):
        if _ORIGINAL not in vars(block):
            setattr(block, _ORIGINAL, block.forward)  # bound: an instance-level forward is kept too
            block.forward = types.MethodType(_checkpointed_forward, block)
        count += 1
    for config in _text_configs(model):
        config.use_cache = False
    return count


def disable_gradient_checkpointing(model: nn.Module) -> int:
    """Undo `enable_gradient_checkpointing` (the blocks' previous forward comes back)."""
    count = 0
    for module in model.modules():
        if _ORIGINAL in vars(module):
            original = vars(module)[_ORIGINAL]
            delattr(module, _ORIGINAL)
            if getattr(original, "__func__", None) is getattr(type(module), "forward", None):
                del module.forward  # the class's forward again
            else:
                module.forward = original
            count += 1
    return count


def is_checkpointed(module: nn.Module) -> bool:
    return _ORIGINAL in vars(module)


@contextlib.contextmanager
def saved_tensors(model: nn.Module | None = None) -> Iterator[SavedTensors]:
    with SavedTensors(model) as counter:
        yield counter
