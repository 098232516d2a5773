"""MetricLogger: one interface, three backends (jsonl file, rich console, Weights & Biases).

W&B runs offline by default so no account is needed (`wandb sync runs/<run>/wandb` uploads later);
tests use mode "disabled", which writes nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from sparsetune.engine.run_folder import atomic_write_text


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def summary(self, summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN/Inf become strings rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl record; None for a blank or half-written line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return int(record.get("step", 0)) if isinstance(record, dict) else None


class JsonlLogger:
    """Appends one JSON object per call to metrics.jsonl (flushed, so a killed run keeps its log)."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        if truncate_after_step is not None and self.path.exists():
            # on resume, drop records logged after the checkpoint so the log reads as one clean run (the
            # caller opens this only once the checkpoint is restored). A line a killed run left half
            # written is dropped too; the rewrite is atomic, so a crash here keeps the old log whole.
            kept = [ln for ln in self.path.read_text().splitlines()
                    if _step_of(ln) is not None and _step_of(ln) <= truncate_after_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        self._fh = self.path.open("a")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self._fh.close()


class ConsoleLogger:
    """Prints eval results as they happen (step metrics are shown by the progress bar)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if evals:
            text = "  ".join(f"{k[5:]}={v:.4f}" if isinstance(v, float) else f"{k[5:]}={v}" for k, v in evals.items())
            self.console.print(f"[bold]step {step}[/bold] eval: {text}")

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class WandbLogger:
    """W&B backend; mode comes from the config unless WANDB_MODE is set in the environment.

    Not online: no system-metrics sampler, no metadata probes, no error reporting from W&B's service
    (see `sparsetune.engine.offline`); the offline run folder is written as usual for `wandb sync`.
    """

    def __init__(self, run_dir: Path, cfg, config_dict: dict[str, Any], name: str, resume_id: str | None = None):
        from sparsetune.engine.offline import wandb_offline_settings

        mode = os.environ.get("WANDB_MODE") or cfg.wandb_mode
        if mode != "online":
            # read by wandb at import and when it starts its service process: set before importing it
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=name, dir=str(run_dir), mode=mode,
            config=config_dict, tags=list(cfg.tags), id=resume_id, resume="allow" if resume_id else None,
            settings=wandb.Settings(silent=True, console="off", **wandb_offline_settings(mode)),
        )

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({k: _clean(v) for k, v in metrics.items()}, step=step)

    def summary(self, summary: dict[str, Any]) -> None:
        for key, value in _flatten(summary).items():
            self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = _clean(value)
    return out


class MultiLogger:
    """Fans out to every configured backend."""

    def __init__(self, loggers: list[MetricLogger]):
        self.loggers = loggers

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def summary(self, summary: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.summary(summary)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()

    def find(self, kind: type):
        return next((lg for lg in self.loggers if isinstance(lg, kind)), None)


def build_logger(cfg, run_dir: Path, config_dict: dict[str, Any], name: str,
                 resume_step: int | None = None, wandb_id: str | None = None) -> MultiLogger:
    from sparsetune.errors import ConfigError

    loggers: list[MetricLogger] = []
    for backend in cfg.backends:
        if backend == "jsonl":
            loggers.append(JsonlLogger(Path(run_dir) / "metrics.jsonl", truncate_after_step=resume_step))
        elif backend == "console":
            loggers.append(ConsoleLogger())
        elif backend == "wandb":
            if (os.environ.get("WANDB_MODE") or cfg.wandb_mode) != "disabled":
                loggers.append(WandbLogger(run_dir, cfg, config_dict, name, resume_id=wandb_id))
        else:
            raise ConfigError(f"unknown logger backend '{backend}'; available: jsonl, console, wandb")
    return MultiLogger(loggers)
