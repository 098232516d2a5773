"""Assemble and run a training job: model → method → data → loop → eval → export → summary."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from sparsetune.train.lean_mlp import make_mlps_lean
from sparsetune.train.run_folder import RunFolder

console = Console(stderr=True)


def quiet_libraries() -> None:
    """Our progress bar and tables replace transformers' per-load bars and deprecation chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from sparsetune.errors import ConfigError

        raise ConfigError("trainer.device=cuda but no CUDA device is available")
    return name


def total_steps(tcfg, n_examples: int) -> int:
    if tcfg.epochs:
        per_epoch = max(1, n_examples // tcfg.batch_size)
        return max(1, math.ceil(tcfg.epochs * per_epoch / tcfg.grad_accum))
    return tcfg.max_steps


@dataclass
class Job:
    """Live objects of a run, for commands that continue after training (prune, forget, eval)."""

    cfg: Any
    run: RunFolder
    model: torch.nn.Module
    tokenizer: Any
    method: Any
    arch: Any
    splits: Any
    device: str
    dataset: Any = None
    collate: Any = None


def setup(cfg, overrides: list[str], job: str = "train", ckpt: dict | None = None, create_run: bool = True) -> Job:
    """Load data and model, apply the method, then create (or reopen) the run folder.

    Everything that can fail on bad input happens before the folder exists, so a failed start
    leaves no half-made run behind and never touches an existing one.
    """
    from sparsetune.data import build_train_dataset, load_splits
    from sparsetune.methods import build_method
    from sparsetune.models import get_arch, load_model

    quiet_libraries()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    splits = load_splits(cfg.data)
    model, tokenizer = load_model(cfg.model)
    arch = get_arch(model)
    method = build_method(cfg.method)
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])  # rebuild the same structure (selection, masks) on resume
    dataset, collate = build_train_dataset(splits, tokenizer, cfg.data)
    bs = cfg.trainer.batch_size
    method.calibration_batches = lambda n: [
        collate([dataset[i] for i in range(b * bs, min(len(dataset), (b + 1) * bs))]) for b in range(n)
    ]
    method.tokenizer = tokenizer
    model = method.apply(model, arch).to(device)
    if cfg.trainer.lean_mlp:
        make_mlps_lean(model)
    run = None
    if create_run:
        run = RunFolder.open(cfg.resume) if cfg.resume else RunFolder.create(cfg, overrides, job)
        console.print(f"[bold]run folder:[/bold] {run.path}")
    return Job(cfg, run, model, tokenizer, method, arch, splits, device, dataset, collate)


def run_job(cfg, overrides: list[str], job: str = "train") -> dict[str, Any]:
    """The `train` / `prune` / `forget` commands: set up, train, evaluate, export."""
    from sparsetune.methods import method_class
    from sparsetune.train.checkpoint import latest_checkpoint, load_checkpoint

    flow = getattr(method_class(cfg.method.name), "job_flow", None)
    if flow is not None:  # methods whose job is a sequence of loops (GS-LoRA's forgetting tasks)
        return flow(cfg, overrides, job)
    ckpt = None
    if cfg.resume:
        path = latest_checkpoint(RunFolder.open(cfg.resume).checkpoints)
        ckpt = load_checkpoint(path) if path else None
    return train(setup(cfg, overrides, job, ckpt=ckpt), ckpt=ckpt)


def train(job: Job, ckpt: dict | None = None) -> dict[str, Any]:
    """Run the loop to the end, evaluate on the held-out split, export, write summary.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sparsetune.eval.efficiency import count_parameters, peak_memory_mb
    from sparsetune.eval.suite import evaluate_model
    from sparsetune.logging import build_logger
    from sparsetune.train.loop import BatchStream, LoopState, TrainLoop, summarise
    from sparsetune.train.losses import task_loss
    from sparsetune.train.optim import build_optimizer, build_scheduler

    cfg, run = job.cfg, job.run
    tcfg = cfg.trainer
    steps = total_steps(tcfg, len(job.dataset))
    optimizer = build_optimizer(job.method, job.model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, steps)
    state = LoopState()
    stream = BatchStream(job.dataset, job.collate, tcfg.batch_size, cfg.seed, state)
    from omegaconf import OmegaConf

    config_dict = OmegaConf.to_container(cfg, resolve=True)
    logger = build_logger(cfg.logger, run.path, config_dict, run.path.name,
                          resume_step=ckpt["loop"]["step"] if ckpt else None,
                          wandb_id=(ckpt or {}).get("wandb_id"))
    from sparsetune.logging import WandbLogger

    wb = logger.find(WandbLogger)

    def evaluate_val(model):
        return evaluate_model(cfg, job.method.prepare_for_eval(model), job.tokenizer, job.splits, "val", run.path)

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]}"),
                        TimeRemainingColumn(), console=console, transient=False)
    loop = TrainLoop(model=job.model, method=job.method, optimizer=optimizer, scheduler=scheduler, stream=stream,
                     loss_fn=task_loss(cfg.model.task), tcfg=tcfg, total_steps=steps, logger=logger,
                     checkpoint_dir=run.checkpoints, device=job.device,
                     evaluate=evaluate_val if len(job.splits.val or []) else None, progress=progress,
                     extra_state=lambda: {"wandb_id": wb.run_id if wb else None})
    if ckpt:
        loop.restore(ckpt)
        console.print(f"resuming from step {state.step}")
    start = time.perf_counter()
    try:
        with progress:
            loop.run()
    except BaseException:
        logger.close()
        raise
    train_time = time.perf_counter() - start
    eval_model = job.method.prepare_for_eval(job.model)
    results = evaluate_model(cfg, eval_model, job.tokenizer, job.splits, "test", run.path) if cfg.eval.enabled else {}
    job.method.export(job.model, run.export)
    if cfg.cache_as:
        publish(run.export, cfg.cache_as)
    trainable, total = count_parameters(job.model)
    summary = {
        "recipe": cfg.recipe,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "device": job.device,
        "trainable_params": trainable,
        "total_params": total,
        **summarise(state),
        "peak_memory_mb": peak_memory_mb(job.device),
        "wall_time_s": train_time,
        "eval": results,
        **job.method.metrics(),
    }
    run.write_summary(summary)
    logger.log({f"eval/{t}/{m}": v for t, r in results.items() for m, v in r.items() if isinstance(v, (int, float))},
               state.step)
    logger.summary(summary)
    logger.close()
    print_summary(summary, run)
    return summary


def publish(export: Path, name: str) -> Path:
    """Copy an exported model into the model cache atomically (replacing an older copy)."""
    import shutil

    from sparsetune.paths import cache_dir

    target = cache_dir("models") / name
    tmp = target.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    console.print(f"cached model as {target}")
    return target


def print_summary(summary: dict[str, Any], run: RunFolder) -> None:
    from sparsetune.eval.report import print_table

    keys = ["method", "model", "steps", "train_loss", "step_time_s", "throughput", "peak_memory_mb",
            "trainable_params", "total_params", "wall_time_s"]
    print_table("summary", {"run": {k: summary[k] for k in keys if k in summary}})
    if summary.get("eval"):
        print_table("eval (held-out split)", summary["eval"])
    console.print(f"[bold]run folder:[/bold] {run.path}")
