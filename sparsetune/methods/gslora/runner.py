"""The `sparsetune forget` job flow: a sequence of forgetting tasks on the engine's TrainLoop.

Per task: fresh trainable state (method.start_task) → TrainLoop on paired retained/forgotten
batches, keeping the best validation H-mean (never the test split) → explicit merge
(method.end_task) → per-class test accuracy → Acc_r / Acc_f / Acc_o / H-mean.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import torch

from sparsetune.errors import ConfigError
from sparsetune.methods.gslora.data import ForgetPairs, available, collate_pairs
from sparsetune.methods.gslora.metrics import class_mean, task_metrics
from sparsetune.methods.gslora.sequence import task_sequence


class TaskLogger:
    """Steps of every task on one axis (W&B wants monotonic steps), tagged with the task number."""

    def __init__(self, inner, offset: int, task: int):
        self.inner, self.offset, self.task = inner, offset, task

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.inner.log({**metrics, "task": self.task}, self.offset + step)


def per_class(model, dataset, cfg, splits, device) -> list[float | None]:
    """Top-1 accuracy of each class (None where the class is absent)."""
    from sparsetune.eval.vision import evaluate_vision

    names = list(splits.class_names) or [str(i) for i in range(splits.num_classes)]
    res = evaluate_vision(model, dataset, cfg.eval.batch_size, splits.num_classes, names, device=device)
    return [res["per_class"].get(n) for n in names]


class Selector:
    """The engine's periodic `evaluate` hook: validation H-mean, keeping the best trainable state."""

    def __init__(self, method, val, before, forgotten, earlier, retained, cfg, splits, device,
                 state=None, min_step: int = 0):
        self.method, self.val, self.before = method, val, before
        # states before the group-sparsity warm-up ends are not candidates: picking one would
        # undo the sparsity phase (its H-mean is often a little higher)
        self.state, self.min_step = state, min_step
        self.sets = (forgotten, earlier, retained)
        self.cfg, self.splits, self.device = cfg, splits, device
        self.best_score, self.best_state, self.best_metrics = float("-inf"), None, {}

    def __call__(self, model) -> dict[str, dict[str, float]]:
        m = task_metrics(per_class(model, self.val, self.cfg, self.splits, self.device), self.before, *self.sets)
        score = m["h_mean"] if m["h_mean"] == m["h_mean"] else m["acc_r"]
        eligible = self.state is None or self.state.step >= self.min_step
        if eligible and score > self.best_score:
            self.best_score, self.best_metrics = score, m
            self.best_state = {k: v.detach().clone() for k, v in self.method.trainable_state_dict(model).items()}
        return {"val": m}

    @torch.no_grad()
    def restore(self, model) -> None:
        params = dict(model.named_parameters())
        for name, value in (self.best_state or {}).items():
            params[name].copy_(value)


def run_forget(cfg, overrides: list[str], job: str = "forget") -> dict[str, Any]:
    from omegaconf import OmegaConf
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sparsetune.eval.efficiency import count_parameters, peak_memory_mb
    from sparsetune.logging import build_logger
    from sparsetune.train.job import console, publish, setup, total_steps
    from sparsetune.train.loop import BatchStream, LoopState, TrainLoop
    from sparsetune.train.losses import classification_loss
    from sparsetune.train.optim import build_optimizer, build_scheduler
    from sparsetune.train.run_folder import RunFolder

    if cfg.resume:
        raise ConfigError("forget runs cannot be resumed; start a new run")
    if cfg.data.kind != "vision" or cfg.model.task != "image_classification":
        raise ConfigError("`forget` needs an image classifier and vision data (e.g. recipe=gslora_vit)")
    jb = setup(cfg, overrides, job, create_run=False)
    model, method, splits, device = jb.model, jb.method, jb.splits, jb.device
    if int(model.config.num_labels) != splits.num_classes:
        raise ConfigError(f"the model has {model.config.num_labels} labels but {cfg.data.name} has "
                          f"{splits.num_classes} classes")
    fcfg = cfg.forget
    tasks = task_sequence(fcfg, splits.num_classes, cfg.seed)
    train_pool = available(splits.train, fcfg.data_ratio, fcfg.shots, cfg.seed)
    val_pool = available(splits.val, fcfg.data_ratio, fcfg.shots, cfg.seed + 1) if len(splits.val or []) else None
    run = RunFolder.create(cfg, overrides, job)
    console.print(f"[bold]run folder:[/bold] {run.path}")
    logger = build_logger(cfg.logger, run.path, OmegaConf.to_container(cfg, resolve=True), run.path.name)

    mcfg = method.cfg
    tcfg = SimpleNamespace(**OmegaConf.to_container(cfg.trainer, resolve=True))
    tcfg.lr = mcfg.lr if mcfg.lr is not None else tcfg.lr
    tcfg.eval_every = mcfg.select_every or tcfg.eval_every
    base_total = count_parameters(model)[1]
    start_all = time.perf_counter()
    test_base = per_class(model, splits.test, cfg, splits, device)
    test_before = test_base
    val_before = per_class(model, val_pool, cfg, splits, device) if val_pool is not None else None
    all_classes = list(range(splits.num_classes))
    # the base row: accuracy over all classes; forgetting metrics do not apply (shown as "-")
    rows: list[dict[str, Any]] = [{"task": 0, "classes": "-", "acc_r": class_mean(test_base, all_classes)}]
    results, offset, gone = [], 0, []
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]}"),
                        TimeRemainingColumn(), console=console, transient=False)
    try:
        for t, forgotten in enumerate(tasks, start=1):
            earlier = list(gone)
            retained = [c for c in all_classes if c not in forgotten and c not in earlier]
            pushed = forgotten + (earlier if fcfg.revisit_earlier else [])
            dataset = ForgetPairs(train_pool.with_classes(retained), train_pool.with_classes(pushed))
            start = time.perf_counter()
            method.start_task(model, train_pool.with_classes(retained + forgotten), device)
            model.to(device)
            trainable, total = count_parameters(model)
            steps = mcfg.steps or total_steps(tcfg, len(dataset))
            optimizer = build_optimizer(method, model, tcfg)
            method.optimizer = optimizer
            state = LoopState()
            stream = BatchStream(dataset, collate_pairs, tcfg.batch_size, cfg.seed + t, state)
            sparse = mcfg.train == "lora" and mcfg.group_alpha > 0
            selector = (Selector(method, val_pool, val_before, forgotten, earlier, retained, cfg, splits, device,
                                 state, int(mcfg.sparsity_warmup * steps) if sparse else 0)
                        if val_pool is not None else None)
            loop = TrainLoop(model=model, method=method, optimizer=optimizer,
                             scheduler=build_scheduler(optimizer, tcfg, steps), stream=stream,
                             loss_fn=classification_loss, tcfg=tcfg, total_steps=steps,
                             logger=TaskLogger(logger, offset, t), checkpoint_dir=run.checkpoints / f"task{t}",
                             device=device, evaluate=selector, progress=progress)
            console.print(f"[bold]task {t}/{len(tasks)}[/bold]: forget classes {forgotten} "
                          f"({len(dataset)} paired images, {steps} steps)")
            with progress:
                loop.run()
            if selector is not None:
                selector(model)  # the final state competes too
                selector.restore(model)
            report = method.end_task(model)
            wall = time.perf_counter() - start
            test_now = per_class(model, splits.test, cfg, splits, device)
            m = task_metrics(test_now, test_before, forgotten, earlier, retained)
            row = {"task": t, "classes": ",".join(map(str, forgotten)), **m,
                   "acc_r_base": class_mean(test_base, retained),
                   "trainable_params": trainable, "trainable_share": trainable / base_total,
                   "steps": steps, "wall_time_s": wall,
                   "val_h_mean": selector.best_metrics.get("h_mean") if selector else None}
            if report:
                row.update({k: report[k] for k in ("groups_surviving", "groups_total")})
            rows.append(row)
            results.append({**row, "forgotten": forgotten, "earlier": earlier,
                            "per_class_test": test_now, **({"groups": report} if report else {})})
            logger.log({f"forget/{k}": v for k, v in row.items() if isinstance(v, (int, float))}, offset + steps)
            offset += steps
            test_before = test_now
            if val_pool is not None:
                val_before = per_class(model, val_pool, cfg, splits, device)
            gone.extend(forgotten)
        method.export(model, run.export)
        if cfg.cache_as:
            publish(run.export, cfg.cache_as)
        last = results[-1]
        summary = {
            "recipe": cfg.recipe, "method": mcfg.name, "model": cfg.model.name, "data": cfg.data.name,
            "device": device, "trainable_params": last["trainable_params"], "total_params": base_total,
            "trainable_share": last["trainable_share"],
            "data_regime": {"data_ratio": fcfg.data_ratio, "shots": fcfg.shots,
                            "train_images": len(train_pool), "val_images": len(val_pool or [])},
            "bnd": method.bnd, "steps": offset, "wall_time_s": time.perf_counter() - start_all,
            "peak_memory_mb": peak_memory_mb(device),
            "base": {"acc_all": rows[0]["acc_r"], "per_class_test": test_base},
            "acc_r": last["acc_r"], "acc_f": last["acc_f"], "acc_o": last["acc_o"], "h_mean": last["h_mean"],
            "tasks": results,
            "eval": {cfg.data.name: {"top1_retained": last["acc_r"], "top1_forgotten": last["acc_f"]}},
        }
        run.write_summary(summary)
        logger.summary({k: v for k, v in summary.items() if k not in ("tasks", "base")})
    finally:
        logger.close()
    from rich.console import Console

    from sparsetune.eval.report import print_table

    cols = ("classes", "acc_r", "acc_f", "acc_o", "h_mean", "acc_f_pre", "acc_r_base", "trainable_share",
            "groups_surviving", "steps", "wall_time_s")
    print_table(f"continual forgetting: {mcfg.name} on {cfg.model.name} (test split)",
                {("base" if r["task"] == 0 else f"task {r['task']}"): {c: r.get(c) for c in cols} for r in rows},
                console=Console(width=max(160, Console().width)))
    console.print(f"[bold]run folder:[/bold] {run.path}")
    return summary
