"""`sparsetune eval`: score a finished run folder or a recipe's untuned model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sparsetune.data import load_splits
from sparsetune.engine.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from sparsetune.engine.logging import build_logger, log_results_table
from sparsetune.engine.measure import count_parameters
from sparsetune.engine.offline import configure_network
from sparsetune.engine.progress import console
from sparsetune.engine.run_folder import RunFolder, held_run_folders, release_run_folders
from sparsetune.engine.runtime import apply_threads, quiet_libraries, resolve_device
from sparsetune.errors import RunFolderBusyError, UserError
from sparsetune.eval.points import score_points
from sparsetune.eval.report import print_table
from sparsetune.eval.suite import eval_tasks, evaluate_model
from sparsetune.jobs.assemble import setup
from sparsetune.jobs.common import eval_log, show_method_output
from sparsetune.jobs.config import load_run_config, validate_job
from sparsetune.jobs.vision_base import ensure_vision_base
from sparsetune.methods import build_method
from sparsetune.methods.base import Method
from sparsetune.models import load_model


def apply_eval_overrides(cfg, overrides: list[str]):
    """Only eval-time settings may change when re-evaluating a run (eval.*, trainer.device/threads)."""
    allowed = ("eval.", "trainer.device", "trainer.threads", "logger.")
    bad = [o for o in overrides if not o.lstrip("+").startswith(allowed)]
    if bad:
        raise UserError(f"eval run=… accepts only eval.*, logger.* and trainer.device/threads overrides, got: {' '.join(bad)}")
    merged = OmegaConf.merge(OmegaConf.to_container(cfg), OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    return validate_job(merged)


def evaluate_run(run_dir: str, overrides: list[str]) -> dict[str, Any]:
    """Rebuild the run's model from its config and final checkpoint, evaluate the held-out split,
    and record the results in its summary.json.

    A run another process is writing right now (its lock is held) is scored from its last complete
    checkpoint, never from a half-written export/, and the line says which step; nothing is recorded
    in the run folder then (one writer per run folder). Otherwise this process holds the lock while
    it records, so a resume cannot start writing underneath it."""
    run = RunFolder.open(run_dir)
    cfg = apply_eval_overrides(load_run_config(run), overrides)
    held = held_run_folders()
    try:
        run.lock()
        busy = False
    except RunFolderBusyError:
        busy = True  # being written: read its last complete checkpoint, record nothing
    try:
        configure_network(cfg)  # the export path below does not go through setup()
        ensure_vision_base(cfg.model)
        summary = run.read_summary()
        model, tokenizer, splits, source, method = _from_export(cfg, run) if not busy else (None,) * 5
        step = summary.get("steps")
        if model is None:
            job, path = from_checkpoint(cfg, run, retry=busy)
            if job is None:
                if busy:
                    raise UserError(f"{run.path} is being written by another process and has no complete "
                                    "checkpoint yet; evaluate it after its first checkpoint (trainer.save_every)")
                raise UserError(f"run has no export or checkpoint to evaluate: {run.path}")
            model, tokenizer, splits, source = job.method.prepare_for_eval(job.model), job.tokenizer, job.splits, path
            method, step = job.method, checkpoint_step(path)
        console.print(f"evaluating {run.path} (from {source}{at_step(step, cfg)})"
                      + ("; the run is still being written by another process: results are not recorded in it"
                         if busy else ""), highlight=False, soft_wrap=True)
        results = evaluate_model(cfg, model, tokenizer, splits, "test", run.path)
        points = score_points(cfg, method, model, tokenizer, splits, run.path)
        if not busy:
            summary.setdefault("eval", {}).update(results)
            if points:
                summary["eval_points"] = points
            run.write_summary(summary)
            log_eval(cfg, run.path, results, points, step=int(summary.get("steps") or 0))
    finally:
        release_run_folders(keep=held)
    print_table("eval (held-out split)", results)
    if points:
        print_table("eval points (held-out split)", points)
    return results


def checkpoint_step(path: Path) -> int:
    """The optimiser step of a `step-<N>` checkpoint folder."""
    return int(Path(path).name.split("-", 1)[1])


def at_step(step: int | None, cfg) -> str:
    """", step N of M" for a message (M only for a run that counts steps, not epochs)."""
    if step is None:
        return ""
    total = None if cfg.trainer.epochs else cfg.trainer.max_steps
    return f", step {step}" + (f" of {total}" if total else "")


def from_checkpoint(cfg, run, path: Path | None = None, retry: bool = False):
    """(Job, checkpoint path) with the run's model rebuilt as it was at its last checkpoint (or at
    `path`) — method applied, trained tensors loaded; (None, None) when the run has no checkpoint.

    `retry`: the run is being written, so the checkpoint `latest` named may be pruned while it is
    read; then the newer one `latest` names by now is read instead."""
    attempts = 5 if retry and path is None else 1
    for attempt in range(attempts):
        chosen = path or latest_checkpoint(run.checkpoints)
        if chosen is None:
            return None, None
        try:
            ckpt = load_checkpoint(chosen)  # verified safetensors + JSON; never unpickles (a legacy state.pt is refused)
            break
        except CheckpointError:
            if attempt + 1 == attempts or latest_checkpoint(run.checkpoints) == chosen:
                raise
    job = setup(cfg, [], "eval", method_state=ckpt["method"], create_run=False, load_data=needs_data(cfg))
    params = dict(job.model.named_parameters())
    unknown = sorted(set(ckpt["model"]) - set(params))
    if unknown:
        raise UserError(f"checkpoint {chosen.name} does not match the run's model: unknown tensors {unknown[:3]}")
    with torch.no_grad():
        for name, value in ckpt["model"].items():
            params[name].copy_(value)
    return job, chosen


def log_eval(cfg, run_path, results: dict[str, Any], points: dict[str, Any] | None, step: int = 0) -> None:
    """Eval results (and eval points) to the run's metric loggers: a metrics.jsonl record and a W&B run
    named `<run>-eval` (offline by default, job_type eval, in the run's group) with the per-task results
    and the eval points as tables; the console tables are printed by the caller."""
    lcfg = OmegaConf.merge(cfg.logger, {"backends": [b for b in cfg.logger.backends if b != "console"]})
    logger = build_logger(lcfg, run_path, OmegaConf.to_container(cfg, resolve=True), f"{run_path.name}-eval",
                          job="eval")
    try:
        # tables first: the scalar record stays the last line of metrics.jsonl, as after a training eval
        log_results_table(logger, "eval/results", results, step)
        if points:
            log_results_table(logger, "eval/points", points, step, index="point")
            plot = Path(run_path) / "eval_points.png"
            if plot.exists():
                logger.log_image("eval/points_plot", plot, step)
        logger.log(eval_log(results), step)
        if points:
            logger.summary({"eval_points": points})
    finally:
        logger.close()


def _from_export(cfg, run):
    """(model, tokenizer, splits, source, method) built from the run's export/ when its method can load one."""
    method = build_method(cfg.method)
    if type(method).load_export is Method.load_export or not run.export.exists():
        return None, None, None, None, None
    quiet_libraries()
    apply_threads(cfg.trainer.threads)
    splits = load_splits(cfg.data) if needs_data(cfg) else None
    base, tokenizer = load_model(cfg.model)
    model = method.load_export(base, run.export)
    if model is None:
        return None, None, None, None, None
    return model.to(resolve_device(cfg.trainer.device)), tokenizer, splits, run.export, method


def needs_data(cfg) -> bool:
    """Whether this evaluation reads the recipe's data set: the held-out split or eval points do; an
    eval of lm-eval tasks alone (eval.tasks=[arc_easy]) never loads or prepares the training data."""
    heldout, _ = eval_tasks(cfg.eval)
    return heldout or bool(list(cfg.eval.points or [])) or cfg.data.kind == "vision"


def evaluate_recipe(cfg, overrides: list[str]) -> dict[str, Any]:
    """Evaluate the recipe's model with the method applied but untrained (e.g. the base model). The new
    run folder's lock is held while it is written (released at the end, for in-process callers)."""
    configure_network(cfg)
    ensure_vision_base(cfg.model)
    held = held_run_folders()
    try:
        job = setup(cfg, overrides, "eval", load_data=needs_data(cfg))
        model = job.method.prepare_for_eval(job.model)
        results = evaluate_model(cfg, model, job.tokenizer, job.splits, "test", job.run.path)
        points = score_points(cfg, job.method, model, job.tokenizer, job.splits, job.run.path)
        trainable, total = count_parameters(job.model)
        job.run.write_summary({"recipe": cfg.recipe, "method": cfg.method.name, "model": cfg.model.name,
                               "data": cfg.data.name, "total_params": total, "eval": results,
                               **({"eval_points": points} if points else {})})
        log_eval(cfg, job.run.path, results, points)
    finally:
        release_run_folders(keep=held)
    show_method_output(job.method)
    print_table("eval (held-out split)", results)
    if points:
        print_table("eval points (held-out split)", points)
    console.print(f"[bold]run folder:[/bold] {job.run.path}")
    return results
