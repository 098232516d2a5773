"""The Method interface: the trainer, evaluator and benchmarks only talk to this and to `arch`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sparsetune.models.arch import Arch


@dataclass
class MethodConfig:
    """Fields every method shares; each method subclasses this with its own knobs."""

    name: str = "full"


class Method:
    """A fine-tuning / compression method applied in place to a stock Hugging Face model."""

    config_class: type[MethodConfig] = MethodConfig
    # which jobs the method serves: "train", "prune" (exports a physically smaller model), "forget"
    jobs: tuple[str, ...] = ("train",)

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        # set by the engine before apply(): n -> the first n training batches, for methods whose
        # selection or initialisation needs data (gradient/activation scores, prototypes)
        self.calibration_batches: Callable[[int], list[dict]] | None = None
        # set by the engine: exports that are whole models ship their tokenizer too
        self.tokenizer: Any = None

    def apply(self, model: torch.nn.Module, arch: Arch) -> torch.nn.Module:
        """Wrap or replace modules in place and freeze what is frozen; returns the model to train."""
        return model

    def parameter_groups(self, model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups (per-group lr / weight decay). Default: all trainable params."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def extra_loss(self, model: torch.nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        """Named regularisers added to the task loss (logged separately). Default: none."""
        return {}

    def on_step(self, step: int, total_steps: int) -> None:
        """Schedules that depend on training progress."""

    def metrics(self) -> dict[str, float]:
        """Method-specific figures for metrics.jsonl / summary.json."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond model parameters needed to resume exactly (indices, masks, codebooks)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def trainable_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The parameters that change in training: what a checkpoint must store to resume."""
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def export(self, model: torch.nn.Module, path: Path) -> Path:
        """Write the artefact a user ships (adapter, merged or pruned HF model). Default: HF folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        return path

    def load_export(self, model: torch.nn.Module, path: Path) -> torch.nn.Module | None:
        """Put an exported artefact onto a freshly loaded stock base model (what a user would do),
        or None when the method restores from checkpoints instead."""
        return None

    def prepare_for_eval(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to evaluate (e.g. merged); must not change training state irreversibly."""
        return model
