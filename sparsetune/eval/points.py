"""Score a method's evaluation points one by one (Method.eval_points / set_eval_point): accuracy on the
held-out split, forward throughput and the method's own figures per point, as a table, a JSON file
and an accuracy-vs-throughput plot in the run folder.

Throughput is the model's forward alone on one preloaded batch of test inputs (no data loading), under
`torch.inference_mode`: after `warmup` calls per point, `cycles` cycles of one forward per point
(interleaved, so load drift on a shared machine hits every point alike); images/s from the median
time, speed-up as the median of the per-cycle ratios against the first point.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sparsetune.engine.measure import StepTimer
from sparsetune.eval.suite import evaluate_model

SKIP_METRICS = ("n",)


def _first_inputs(part, batch: int) -> dict[str, Any] | None:
    """One batch of model inputs from a vision split, or None for text splits."""
    items = [part[i] for i in range(min(batch, len(part)))]
    if not items or "pixel_values" not in items[0]:
        return None
    return {"pixel_values": torch.stack([torch.as_tensor(it["pixel_values"]) for it in items])}


def _flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    one = len(results) == 1
    return {(m if one else f"{task}/{m}"): v for task, res in results.items() for m, v in res.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and m not in SKIP_METRICS}


def _free_path(path: Path) -> Path:
    """`path`, or a time-stamped sibling when it exists (nothing in a run folder is overwritten)."""
    if not path.exists():
        return path
    return path.with_name(f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")


def plot_points(rows: dict[str, dict[str, Any]], path: Path, title: str, metric: str = "top1") -> Path | None:
    """Accuracy vs images/s, one labelled marker per point (PNG)."""
    pts = [(label, r["images_per_s"], r[metric]) for label, r in rows.items() if "images_per_s" in r and metric in r]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    xs, ys = [p[1] for p in pts], [100 * p[2] for p in pts]
    ax.plot(xs, ys, "o-", color="tab:blue")
    for (label, x, _), y in zip(pts, ys):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("images / s (forward, inference_mode)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def score_points(cfg, method, model, tokenizer, splits, run_path: Path, split: str = "test",
                 warmup: int = 3, cycles: int = 20) -> dict[str, dict[str, Any]] | None:
    """{label: {method figures, accuracy metrics, images_per_s, speedup}} or None when the method has no
    points. Files: <run>/eval_points.json and <run>/eval_points.png."""
    points = method.eval_points(list(cfg.eval.points or []))
    if not points:
        return None
    first = next(model.parameters())
    device = first.device
    inputs = _first_inputs(getattr(splits, split), int(cfg.eval.batch_size))
    if inputs is not None:
        inputs = {k: v.to(device=device, dtype=first.dtype) for k, v in inputs.items()}
    rows: dict[str, dict[str, Any]] = {}
    for label, point in points:
        row = dict(method.set_eval_point(model, point))
        row.update(_flatten(evaluate_model(cfg, model, tokenizer, splits, split, run_path)))
        rows[label] = row
    if inputs is not None:
        timers = {label: StepTimer(device) for label, _ in points}
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for _label, point in points:
                method.set_eval_point(model, point)
                for _ in range(warmup):
                    model(**inputs)
            for _ in range(cycles):  # one forward per point per cycle: load drift hits every point alike
                for label, point in points:
                    method.set_eval_point(model, point)
                    with timers[label].step():
                        model(**inputs)
        model.train(was_training)
        batch = int(inputs["pixel_values"].shape[0])
        ref = timers[points[0][0]].times
        for label, _ in points:
            times = timers[label].times
            rows[label].update({"images_per_s": batch / statistics.median(times),
                                "speedup": statistics.median(a / b for a, b in zip(ref, times))})
    record = {"points": rows, "split": split, "timing": {
        "batch": None if inputs is None else int(inputs["pixel_values"].shape[0]), "cycles": cycles,
        "warmup": warmup, "threads": torch.get_num_threads(), "device": str(device),
        "dtype": str(first.dtype).removeprefix("torch."), "speedup": "median over cycles of the first point's forward time / this point's"}}
    run_path = Path(run_path)
    out = _free_path(run_path / "eval_points.json")
    out.write_text(json.dumps(record, indent=2) + "\n")
    metric = "top1" if any("top1" in r for r in rows.values()) else None
    if metric:
        title = f"{cfg.method.name} on {cfg.model.name} / {cfg.data.name}"
        plot_points(rows, out.with_suffix(".png"), title, metric)
    return rows
