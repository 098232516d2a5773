"""The `sparsetune forget` job: a sequence of forgetting tasks, each one run of the engine's loop.

Per task: the method's `start_task` (fresh adapter, prototypes) → TrainLoop on paired retained/forgotten
batches, keeping the best validation H-mean (never the test split) → the method's `end_task` (explicit
merge) → per-class test accuracy → Acc_r / Acc_f / Acc_o / H-mean. The method keeps only its algorithm;
the sequence, data regime, selection, tables and summary live here, for every forgetting method.

In a process group (`trainer.nproc=N`, torchrun) every rank runs every task: each task's loss module
is wrapped in a fresh DDP (the trainable set changes per task: a new adapter), rank r of W takes every
W-th micro-batch, and `start_task` / `end_task` (merge) / the proximal group step run on every rank on
identical weights. Rank 0 alone evaluates; the selection decision (its validation score) is broadcast,
so every rank keeps and restores the same state (broadcast from rank 0 after the restore), and rank 0
alone writes the run folder, metrics, W&B, the heat map and the export.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed
from omegaconf import OmegaConf

from sparsetune.data import collate_vision
from sparsetune.data.forgetting import ForgetPairs, available, collate_pairs, task_sequence
from sparsetune.engine import distributed as dist
from sparsetune.engine.logging import MultiLogger, build_logger
from sparsetune.engine.loop import LoopState
from sparsetune.engine.losses import classification_loss
from sparsetune.engine.measure import count_parameters, peak_memory_mb
from sparsetune.engine.progress import console, training_progress
from sparsetune.engine.run_folder import check_present
from sparsetune.engine.selection import BestState
from sparsetune.errors import ConfigError
from sparsetune.eval.forgetting import class_mean, group_norm_grid, plot_group_norms, task_metrics
from sparsetune.eval.report import print_table
from sparsetune.eval.vision import evaluate_vision
from sparsetune.jobs.assemble import open_run, setup
from sparsetune.jobs.common import publish, show_method_output
from sparsetune.jobs.launch import report_run
from sparsetune.jobs.train import total_steps
from sparsetune.jobs.train_task import train_task
from sparsetune.methods.base import ForgetTask

TABLE_COLUMNS = ("classes", "acc_r", "acc_f", "acc_o", "h_mean", "acc_f_pre", "acc_r_base", "trainable_share",
                 "groups", "steps", "wall_time_s")
HEATMAP = "group_norms.png"


class TaskLogger:
    """Steps of every task on one axis (W&B wants monotonic steps), tagged with the task number."""

    def __init__(self, inner, offset: int, task: int):
        self.inner, self.offset, self.task = inner, offset, task

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.inner.log({**metrics, "task": self.task}, self.offset + step)

    def close(self) -> None:
        """The job's logger outlives a task: the job closes it."""


def per_class(model, dataset, cfg, splits, device) -> list[float | None]:
    """Top-1 accuracy of each class (None where the class is absent)."""
    names = list(splits.class_names) or [str(i) for i in range(splits.num_classes)]
    res = evaluate_vision(model, dataset, cfg.eval.batch_size, splits.num_classes, names, device=device)
    return [res["per_class"].get(n) for n in names]


def image_batches(dataset, batch_size: int = 256):
    """Collated batches over a vision dataset, in order (prototypes, statistics)."""
    for start in range(0, len(dataset), batch_size):
        yield collate_vision([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])


def task_trainer_config(cfg, method):
    """trainer.* for every task, with the method's own lr / steps / selection interval applied."""
    tcfg = OmegaConf.create(OmegaConf.to_container(cfg.trainer, resolve=True))
    for key, value in method.trainer_overrides().items():
        tcfg[key] = value
    return tcfg


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """The printed cells of one row: surviving groups as "k/n" (what group sparsity kept)."""
    cells = {c: row.get(c) for c in TABLE_COLUMNS}
    if "groups_surviving" in row:
        cells["groups"] = f"{row['groups_surviving']}/{row.get('groups_total', '?')}"
    return cells


def report_groups(results: list[dict[str, Any]], run_dir, logger, step: int | None = None) -> dict[str, Any]:
    """Group norms per task x group: a heat map in the run folder, an image and a table for the
    logger (W&B); returns what the summary records. Nothing for methods without groups."""
    reports = [r.get("groups", {}) for r in results]
    if not any(rep.get("group_norms") for rep in reports):
        return {}
    names, grid = group_norm_grid(reports)
    labels = [f"task {r['task']} ({r['classes']})" for r in results]
    path = plot_group_norms(names, grid, labels, run_dir / HEATMAP)
    if getattr(logger, "log_image", None):
        logger.log_image("forget/group_norms", path, step)
    if getattr(logger, "log_table", None):
        logger.log_table("forget/group_norms", ["task", "classes", *names],
                         [[r["task"], r["classes"], *row] for r, row in zip(results, grid)], step)
    return {"groups_surviving_per_task": [rep.get("groups_surviving") for rep in reports],
            "group_norms_per_task": [rep.get("group_norms") for rep in reports], "group_norms_png": HEATMAP}


def check_forget_job(cfg, model, splits) -> None:
    if cfg.data.kind != "vision" or cfg.model.task != "image_classification":
        raise ConfigError("`forget` needs an image classifier and vision data (e.g. recipe=gslora_vit)")
    if int(model.config.num_labels) != splits.num_classes:
        raise ConfigError(f"the model has {model.config.num_labels} labels but {cfg.data.name} has "
                          f"{splits.num_classes} classes")


@torch.no_grad()
def sync_trainable(model) -> None:
    """Rank 0's values of the trainable parameters on every rank (after a selection restore: the
    replicas are identical already under DDP; this makes it so by construction)."""
    if dist.active():
        for p in model.parameters():
            if p.requires_grad:
                torch.distributed.broadcast(p.data, src=0)


def run_forget(cfg, overrides: list[str], job: str = "forget") -> dict[str, Any]:
    if cfg.resume:
        raise ConfigError("forget runs cannot be resumed; start a new run")
    jb = setup(cfg, overrides, job, create_run=False)
    model, method, splits, device = jb.model, jb.method, jb.splits, jb.device
    check_forget_job(cfg, model, splits)
    fcfg = cfg.forget
    tasks = task_sequence(fcfg, splits.num_classes, cfg.seed)
    train_pool = available(splits.train, fcfg.data_ratio, fcfg.shots, cfg.seed)
    val_pool = available(splits.val, fcfg.data_ratio, fcfg.shots, cfg.seed + 1) if len(splits.val or []) else None
    tcfg = task_trainer_config(cfg, method)
    main, world = dist.is_main(), dist.world_size()
    run = open_run(jb, overrides, job)  # every input check above has passed
    if main:
        logger = build_logger(cfg.logger, run.path, OmegaConf.to_container(cfg, resolve=True), run.path.name)
    else:
        logger = MultiLogger([])  # ranks > 0 log nothing

    def on_main(fn, *args):
        """Evaluation runs on rank 0 only (None elsewhere): the replicas are identical."""
        return fn(*args) if main else None

    base_total = count_parameters(model)[1]
    start_all = time.perf_counter()
    test_base = on_main(per_class, model, splits.test, cfg, splits, device)
    test_before = test_base
    val_before = on_main(per_class, model, val_pool, cfg, splits, device) if val_pool is not None else None
    all_classes = list(range(splits.num_classes))
    # the base row: accuracy over all classes; forgetting metrics do not apply (shown as "-")
    rows: list[dict[str, Any]] = [{"task": 0, "classes": "-",
                                   "acc_r": class_mean(test_base, all_classes) if main else None}]
    results, offset, gone = [], 0, []
    progress = training_progress() if main else None
    try:
        for t, forgotten in enumerate(tasks, start=1):
            earlier = list(gone)
            retained = [c for c in all_classes if c not in forgotten and c not in earlier]
            pushed = forgotten + (earlier if fcfg.revisit_earlier else [])
            dataset = ForgetPairs(train_pool.with_classes(retained), train_pool.with_classes(pushed))
            steps = total_steps(tcfg, len(dataset), world)
            seen = train_pool.with_classes(retained + forgotten)
            task = ForgetTask(index=t, forgotten=list(forgotten), earlier=earlier, retained=retained,
                              batches=lambda seen=seen: image_batches(seen), total_steps=steps)
            start = time.perf_counter()
            method.start_task(model, task)
            model.to(device)
            trainable = count_parameters(model)[0]
            state = LoopState()
            selector = None
            if val_pool is not None:
                first = method.selection_start(steps)

                def score(m, forgotten=forgotten, earlier=earlier, retained=retained, before=val_before):
                    # rank 0 scores, every rank gets its (score, metrics): BestState decides alike everywhere
                    out = None
                    if main:
                        metrics = task_metrics(per_class(m, val_pool, cfg, splits, device), before, forgotten,
                                               earlier, retained)
                        out = (metrics["h_mean"] if metrics["h_mean"] == metrics["h_mean"] else metrics["acc_r"],
                               metrics)
                    return tuple(dist.broadcast_object(out))

                selector = BestState(method, score, eligible=lambda state=state, first=first: state.step >= first)
            if main:
                console.print(f"[bold]task {t}/{len(tasks)}[/bold]: forget classes {forgotten} "
                              f"({len(dataset)} paired images, {steps} steps)")
            # a fresh loss module per task (a new adapter: a fresh DDP in a group)
            done = train_task(jb, dataset=dataset, collate=collate_pairs, tcfg=tcfg, steps=steps, seed=cfg.seed + t,
                              loss_fn=classification_loss, checkpoint_dir=run.checkpoints / f"task{t}",
                              open_logger=lambda t=t, offset=offset: TaskLogger(logger, offset, t),
                              evaluate=selector, progress=progress, state=state)
            if selector is not None:
                selector(model)  # the final state competes too
                selector.restore(model)
                sync_trainable(model)
            done.loop.step_module = None  # the wrapper's parameter set ends with the task
            report = method.end_task(model)  # merges on every rank
            wall = time.perf_counter() - start
            if not main:  # rows, metrics and the next task's baselines are rank 0's
                offset += steps
                gone.extend(forgotten)
                continue
            test_now = per_class(model, splits.test, cfg, splits, device)
            m = task_metrics(test_now, test_before, forgotten, earlier, retained)
            row = {"task": t, "classes": ",".join(map(str, forgotten)), **m,
                   "acc_r_base": class_mean(test_base, retained),
                   "trainable_params": trainable, "trainable_share": trainable / base_total,
                   "steps": steps, "wall_time_s": wall,
                   "val_h_mean": selector.best_metrics.get("h_mean") if selector else None}
            row.update({k: report[k] for k in ("groups_surviving", "groups_total") if k in report})
            rows.append(row)
            results.append({**row, "forgotten": forgotten, "earlier": earlier,
                            "per_class_test": test_now, **({"groups": report} if report else {})})
            per_task = {f"forget/{k}": v for k, v in row.items() if isinstance(v, (int, float))}
            per_task.update({f"forget/group_norm/{n}": v for n, v in report.get("group_norms", {}).items()})
            logger.log(per_task, offset + steps)
            offset += steps
            test_before = test_now
            if val_pool is not None:
                val_before = per_class(model, val_pool, cfg, splits, device)
            gone.extend(forgotten)
        if not main:
            return {}
        check_present(run.path)
        method.export(model, run.export)
        if cfg.cache_as:
            publish(run.export, cfg.cache_as)
        last = results[-1]
        groups = report_groups(results, run.path, logger, offset)
        summary = {
            "status": "finished",
            "recipe": cfg.recipe, "method": cfg.method.name, "model": cfg.model.name, "data": cfg.data.name,
            "device": device, "trainable_params": last["trainable_params"], "total_params": base_total,
            "trainable_share": last["trainable_share"],
            "data_regime": {"data_ratio": fcfg.data_ratio, "shots": fcfg.shots,
                            "train_images": len(train_pool), "val_images": len(val_pool or [])},
            "steps": offset, "wall_time_s": time.perf_counter() - start_all,
            "peak_memory_mb": peak_memory_mb(device),
            "base": {"acc_all": rows[0]["acc_r"], "per_class_test": test_base},
            "acc_r": last["acc_r"], "acc_f": last["acc_f"], "acc_o": last["acc_o"], "h_mean": last["h_mean"],
            "tasks": results,
            "eval": {cfg.data.name: {"top1_retained": last["acc_r"], "top1_forgotten": last["acc_f"]}},
            **groups,
            **method.metrics(),
        }
        run.write_summary(summary)
        logger.summary({k: v for k, v in summary.items() if k not in ("tasks", "base", "group_norms_per_task")})
    finally:
        logger.close()
    if world > 1:
        report_run(run.path)
    show_method_output(method)
    print_table(f"continual forgetting: {cfg.method.name} on {cfg.model.name} (test split)",
                {("base" if r["task"] == 0 else f"task {r['task']}"): table_row(r) for r in rows})
    console.print(f"[bold]run folder:[/bold] {run.path}")
    return summary
