"""MetricLogger: one interface, three backends (jsonl file, rich console, Weights & Biases).

W&B runs offline by default so no account is needed (`wandb sync runs/<run>/wandb` uploads later);
tests use mode "disabled", which writes nothing.

Beyond scalars: `log_table` (W&B `wandb.Table`; a jsonl record with the rows), `log_image` (W&B
`wandb.Image`; a jsonl record with the path) and `log_artifact` (W&B only; the export folder). Every W&B
run carries `group` (`logger.group`, e.g. one sweep; default the run folder's name, so a run's train,
eval and export W&B runs sit together) and `job_type` (`logger.job_type`, default the job name: train,
prune, forget, eval, bench, export), and each metric section `sec/*` is plotted against its
own step axis `sec/step` (`define_metric`), so a forget run's per-task metrics and a train run's steps
read naturally in the W&B UI.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from sparsetune.engine.interrupts import critical
from sparsetune.engine.offline import wandb_offline_settings
from sparsetune.engine.run_folder import DISK_ERRNOS, atomic_write_text, check_present, write_fault
from sparsetune.errors import ConfigError


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None: ...
    def log_image(self, key: str, path: Path, step: int | None = None) -> None: ...
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


def _append(fd: int, data: bytes) -> None:
    """Write all of `data` at the end of the file (os.write may write part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class JsonlLogger:
    """Appends one JSON object per call to metrics.jsonl, a whole line or nothing: each line goes to
    the file in one unbuffered append (a killed run keeps its log), a write the disk refuses is cut
    back to the last whole line (WriteFaultError), a Ctrl-C waits for the line to be written, and a
    run folder deleted mid-run is not written to (RunFolderGoneError)."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        if truncate_after_step is not None and self.path.exists():
            # on resume, drop records logged after the checkpoint so the log reads as one clean run (the
            # caller opens this only once the checkpoint is restored). A line a killed run left half
            # written is dropped too; the rewrite is atomic, so a crash here keeps the old log whole.
            kept = [ln for ln in self.path.read_text().splitlines()
                    if _step_of(ln) is not None and _step_of(ln) <= truncate_after_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._step = truncate_after_step or 0

    def _write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        check_present(self.path.parent)
        with critical():
            size = os.fstat(self._fd).st_size
            try:
                _append(self._fd, data)
            except OSError as exc:
                try:
                    os.ftruncate(self._fd, size)  # no half line: back to the last whole record
                except OSError:
                    pass
                check_present(self.path.parent)  # deleted during the write: say so
                if exc.errno in DISK_ERRNOS:
                    raise write_fault(self.path, exc) from None
                raise

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._step = step
        self._write({"step": step, **{k: _clean(v) for k, v in metrics.items()}})

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        """One record `{"step", "table": key, "columns", "rows"}` (no metric keys, so scalar readers skip it)."""
        self._write({"step": self._step if step is None else step, "table": key, "columns": list(columns),
                     "rows": [[_clean(v) for v in row] for row in rows]})

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        self._write({"step": self._step if step is None else step, "image": key, "path": str(path)})

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ConsoleLogger:
    """Prints eval results as they happen (step metrics are shown by the progress bar)."""

    def __init__(self, console=None):
        self.console = console or Console(stderr=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        evals = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        if evals:
            text = "  ".join(f"{k[5:]}={v:.4f}" if isinstance(v, float) else f"{k[5:]}={v}" for k, v in evals.items())
            self.console.print(f"[bold]step {step}[/bold] eval: {text}")

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        pass  # the jobs print their own tables

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        pass

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class WandbLogger:
    """W&B backend; mode comes from the config unless WANDB_MODE is set in the environment.

    Not online: no system-metrics sampler, no metadata probes, no error reporting from W&B's service
    (see `sparsetune.engine.offline`); the offline run folder is written as usual for `wandb sync`.
    """

    def __init__(self, run_dir: Path, cfg, config_dict: dict[str, Any], name: str, resume_id: str | None = None,
                 job: str | None = None):
        mode = os.environ.get("WANDB_MODE") or cfg.wandb_mode
        if mode != "online":
            # read by wandb at import and when it starts its service process: set before importing it
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=name, dir=str(run_dir), mode=mode,
            config=config_dict, tags=list(cfg.tags), id=resume_id, resume="allow" if resume_id else None,
            group=getattr(cfg, "group", None) or Path(run_dir).name, job_type=getattr(cfg, "job_type", None) or job,
            settings=wandb.Settings(silent=True, console="off", **wandb_offline_settings(mode)),
        )
        self._wandb = wandb
        self._sections: set[str] = set()

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    def _axes(self, keys) -> set[str]:
        """Sections of these keys; a new one gets `sec/*` plotted against `sec/step` (define_metric)."""
        sections = {k.split("/", 1)[0] for k in keys}
        for sec in sorted(sections - self._sections):
            self.run.define_metric(f"{sec}/step", hidden=True)
            self.run.define_metric(f"{sec}/*", step_metric=f"{sec}/step")
        self._sections |= sections
        return sections

    def log(self, metrics: dict[str, Any], step: int) -> None:
        # bare keys (the loop's loss, lr, step_time_s, ...) go under train/ so they share its step axis
        data = {(k if "/" in k else f"train/{k}"): _clean(v) for k, v in metrics.items()}
        for sec in self._axes(data):
            data[f"{sec}/step"] = step
        self.run.log(data, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        # mixed types allowed: a column may hold a number in one row and "nan" or None in another
        table = self._wandb.Table(columns=list(columns), data=[[_clean(v) for v in row] for row in rows],
                                  allow_mixed_types=True)
        self.run.log({key: table}, step=step)

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        self.run.log({key: self._wandb.Image(str(path))}, step=step)

    def log_artifact(self, path: Path, name: str, kind: str = "model", metadata: dict[str, Any] | None = None):
        """The folder at `path` as a W&B Artifact (offline: stored in the run, uploaded by `wandb sync`)."""
        artifact = self._wandb.Artifact(name=name, type=kind, metadata=metadata or {})
        # immutable: the files are referenced where they are, not copied into W&B's staging area
        artifact.add_dir(str(path), policy="immutable", skip_cache=True)
        self.run.log_artifact(artifact)
        return artifact

    def summary(self, summary: dict[str, Any]) -> None:
        """Flattened into the run summary; a job's final `eval` ({task: {metric: value}}) also becomes
        the `eval/results` table, so train and prune runs carry one like `sparsetune eval` does."""
        for key, value in _flatten(summary).items():
            self.run.summary[key] = value
        results = summary.get("eval")
        if isinstance(results, dict) and results and all(isinstance(r, dict) for r in results.values()):
            self.log_table("eval/results", *table_rows(results))

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

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log_table(key, columns, rows, step)

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log_image(key, path, step)

    def log_artifact(self, path: Path, name: str, kind: str = "model", metadata: dict[str, Any] | None = None) -> None:
        """W&B backends only (the files are on disk already for the others)."""
        for lg in self.loggers:
            if hasattr(lg, "log_artifact"):
                lg.log_artifact(path, name, kind, metadata)

    def summary(self, summary: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.summary(summary)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()

    def find(self, kind: type):
        return next((lg for lg in self.loggers if isinstance(lg, kind)), None)


def table_rows(results: dict[str, dict[str, Any]], index: str = "task") -> tuple[list[str], list[list]]:
    """{row: {column: value}} (eval results per task, forgetting per class or per task, a method's
    `tables()` entry) as (columns, rows) for `log_table`; nested dicts and lists are left out."""
    names = list(dict.fromkeys(k for r in results.values() if isinstance(r, dict) for k, v in r.items()
                               if not isinstance(v, (dict, list, tuple))))
    rows = [[str(row), *(_clean((values or {}).get(n)) for n in names)] for row, values in results.items()
            if isinstance(values, dict)]
    return [index, *names], rows


def log_results_table(logger, key: str, results: dict[str, dict[str, Any]], step: int | None = None,
                      index: str = "task") -> None:
    """One table row per entry of `results` (e.g. `eval/results` per task, `forget/classes` per class)."""
    columns, rows = table_rows(results, index)
    if rows:
        logger.log_table(key, columns, rows, step)


def log_method_tables(logger, tables: dict[str, dict[str, dict[str, Any]]], step: int | None = None,
                      prefix: str = "tables") -> None:
    """A method's `tables()` ({title: {row: {column: value}}}), each as `prefix/<title>`."""
    for title, results in tables.items():
        log_results_table(logger, f"{prefix}/{title}", results, step, index="row")


def job_name(run_dir: Path) -> str | None:
    """The job that made a run folder: the first word of its overrides.txt (`train`, `prune`, `forget`, ...)."""
    try:
        words = (Path(run_dir) / "overrides.txt").read_text().split()
    except OSError:
        return None
    return words[0] if words else None


def build_logger(cfg, run_dir: Path, config_dict: dict[str, Any], name: str,
                 resume_step: int | None = None, wandb_id: str | None = None, job: str | None = None) -> MultiLogger:
    """`job` is the W&B job_type unless `logger.job_type` is set; by default it is read from the run folder."""
    loggers: list[MetricLogger] = []
    for backend in cfg.backends:
        if backend == "jsonl":
            loggers.append(JsonlLogger(Path(run_dir) / "metrics.jsonl", truncate_after_step=resume_step))
        elif backend == "console":
            loggers.append(ConsoleLogger())
        elif backend == "wandb":
            if (os.environ.get("WANDB_MODE") or cfg.wandb_mode) != "disabled":
                loggers.append(WandbLogger(run_dir, cfg, config_dict, name, resume_id=wandb_id,
                                           job=job or job_name(run_dir)))
        else:
            raise ConfigError(f"unknown logger backend '{backend}'; available: jsonl, console, wandb")
    return MultiLogger(loggers)
