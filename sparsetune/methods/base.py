"""The Method interface: the trainer, evaluator and benchmarks only talk to this and to `arch`.

A method never imports the engine: the engine calls it, and hands it what it knows in a MethodContext.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from sparsetune.config.schema import MethodConfig
from sparsetune.errors import UserError
from sparsetune.models.arch import get_arch

if TYPE_CHECKING:
    import torch

    from sparsetune.models.arch import Arch


def config_dict(cfg: Any) -> dict[str, Any]:
    """A method config (dataclass or DictConfig) as a plain dict, for export provenance files."""
    if is_dataclass(cfg):
        return asdict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - anything mapping-like is good enough for provenance
        return dict(cfg)


@dataclass
class MethodContext:
    """What the engine knows and a method may use; handed to `apply` (methods never reach for it).

    `optimizer` is filled in once the engine has built one (GS-LoRA's proximal step reads its lr).
    """

    arch: Arch
    tokenizer: Any = None
    # n -> the first n training batches, for selection or initialisation that needs data
    calibration_batches: Callable[[int], list[dict]] | None = None
    device: str = "cpu"
    precision: str = "fp32"
    run_dir: Path | None = None
    optimizer: Any = None

    @classmethod
    def of(cls, model: torch.nn.Module, **kwargs: Any) -> MethodContext:
        """A context for `model` outside any job (tests, notebooks): arch only, unless given."""
        return cls(arch=get_arch(model), **kwargs)


@dataclass
class ForgetTask:
    """One task of a `forget` sequence, as the forget job hands it to a forgetting method."""

    index: int  # 1-based
    forgotten: list[int]
    earlier: list[int]  # forgotten by earlier tasks
    retained: list[int]
    # batches ({"pixel_values", "labels"}) of the task's training images (retained + forgotten classes),
    # from the model entering the task: what prototypes are computed from
    batches: Callable[[], Iterable[dict]] = field(default=lambda: iter(()))
    total_steps: int = 0


class Method:
    """A fine-tuning / compression method applied in place to a stock Hugging Face model."""

    config_class: type[MethodConfig] = MethodConfig
    # which jobs the method serves: "train", "prune" (exports a physically smaller model), "forget"
    jobs: tuple[str, ...] = ("train",)
    # multi-process training: FSDP2 shards whole blocks, so only methods that keep stock (or PEFT)
    # modules inside them and restore from full state list "fsdp"; custom autograd paths use DDP
    strategies: tuple[str, ...] = ("ddp",)
    # whether a step's graph can miss some trainable parameters, so DDP must look for unused ones
    # (a graph walk per forward: only where needed; tests/engine/test_distributed.py checks the rest)
    ddp_find_unused: bool = False

    def __init__(self, cfg: MethodConfig):
        self.config_class.check(cfg)  # compose ran it already; a method built in code gets the same rules
        self.cfg = cfg
        self.ctx: MethodContext | None = None  # the engine's context, kept by apply()

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        """Wrap or replace modules in place and freeze what is frozen; returns the model to train."""
        self.ctx = ctx
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

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Extra tables for the job to print at the end ({title: {row: {column: value}}})."""
        return {}

    def notices(self) -> list[str]:
        """Warnings for the user (the job prints them; methods never print)."""
        return []

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

    # what `sparsetune export` offers (jobs/export.py reads these; it knows no method by name):
    # stock_export: `export()` writes a stock HF folder (the default does), so --format merged is
    # that folder as it is; otherwise `export_merged` makes one from the trained model
    stock_export: bool = True
    # the `adapter` format is a PEFT adapter folder, so --format peft is offered too
    peft_adapter: bool = False
    # why PEFT cannot express the method (the refusal of --format peft says it)
    no_peft_reason: str = "its export is a full model, not an adapter"
    # what a user of the merged folder should know (the model card prints it)
    merged_note: str = ""

    def export_merged(self, model: torch.nn.Module, path: Path) -> Path:
        """A stock Hugging Face folder of the trained model (a method whose `export()` writes its own
        format overrides this)."""
        raise UserError(f"--format merged is not available for method '{self.cfg.name}'; use --format adapter")

    def load_export(self, model: torch.nn.Module, path: Path) -> torch.nn.Module | None:
        """Put an exported artefact onto a freshly loaded stock base model (what a user would do),
        or None when the method restores from checkpoints instead."""
        return None

    def eval_points(self, points: list) -> list[tuple[str, dict[str, Any]]]:
        """Settings `sparsetune eval` scores one by one, as [(label, setting)] (e.g. EViT's keep rates).

        `points` is the config's eval.points ([] when not given; a method may fall back to its own
        default list). Returning [] (the default) means the model is scored once, as configured. For each
        point the eval job calls `set_eval_point`, scores the held-out split, times the forward (images/s
        for vision) and writes the table to the run folder (eval_points.json and a plot).
        """
        return []

    def set_eval_point(self, model: torch.nn.Module, point: dict[str, Any]) -> dict[str, Any]:
        """Switch the applied model to one setting from `eval_points` (in place, cheap, reversible);
        returns the method's own figures for it (e.g. keep_rate, gmacs): columns of the points table."""
        raise NotImplementedError(f"{type(self).__name__} offers no evaluation points")

    def prepare_for_eval(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to evaluate (e.g. merged); must not change training state irreversibly."""
        return model


class ForgettingMethod(Method):
    """A method the `forget` job drives: one training loop per task between these two hooks."""

    jobs = ("forget",)

    def start_task(self, model: torch.nn.Module, task: ForgetTask) -> None:
        """Fresh trainable state for the task (e.g. a new adapter), before its optimiser is built."""

    def end_task(self, model: torch.nn.Module) -> dict[str, Any]:
        """Make the task permanent (e.g. merge the adapter); returns figures for the task's row."""
        return {}

    def selection_start(self, total_steps: int) -> int:
        """First step whose state may be selected on validation (e.g. after a sparsity warm-up)."""
        return 0

    def trainer_overrides(self) -> dict[str, Any]:
        """trainer.* values this method sets for every task (e.g. its own lr); default none."""
        return {}
