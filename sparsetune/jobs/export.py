"""`sparsetune export run=DIR --format merged|adapter|peft`: a finished run as a portable folder.

- merged: a stock Hugging Face folder that plain `from_pretrained` loads, logits equal to the
  training-time model. LoRA/DoRA are merged with PEFT's `merge_and_unload`, S²FT's deltas are fused
  (and its co-permutation undone) by `S2FT.export_merged`, SPT's LoRA factors are merged and its sparse
  attention and routed FFN dropped (the folder equals the SPT model run dense, `method.sparse_eval=false`;
  the card says so). Full, PAT, prune-then-LoRA, the GS-LoRA family and EViT export a stock folder
  already: it is copied as it is (EViT's token reorganisation is re-applied only by sparsetune).
- adapter: the method's own format, what the run wrote to `export/`.
- peft: a PEFT adapter folder (`PeftModel.from_pretrained`), for LoRA and DoRA only; other methods
  are refused with one line (PEFT has no way to express them).

Every folder carries a model card (README.md) and, when W&B is on, is logged as a W&B Artifact. The
folder is written next to its destination and renamed into place, so a failed export leaves nothing.

The folder and its card name the training step they hold (default folder `<run>/export-<fmt>-step<N>`).
A run another process is writing right now (its run folder lock is held) is exported from its last
complete checkpoint — never from a half-written export/ — and the card says the run was still training.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from peft import PeftModel

from sparsetune.engine.checkpoint import CheckpointError, latest_checkpoint
from sparsetune.engine.logging import build_logger
from sparsetune.engine.offline import configure_network
from sparsetune.engine.progress import console
from sparsetune.engine.run_folder import RunFolder
from sparsetune.engine.runtime import quiet_libraries, seed_everything
from sparsetune.errors import UserError
from sparsetune.jobs.config import EXPORT_FORMATS as FORMATS
from sparsetune.jobs.config import load_run_config
from sparsetune.jobs.evaluate import at_step, checkpoint_step, from_checkpoint
from sparsetune.jobs.vision_base import ensure_vision_base
from sparsetune.methods import build_method, method_class
from sparsetune.models import load_model


def refusal(method: str, fmt: str) -> str | None:
    """The one-line reason a method cannot be exported in a format, or None (the method's own facts:
    Method.peft_adapter, no_peft_reason)."""
    if fmt not in FORMATS:
        return f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'"
    cls = method_class(method)
    if fmt == "peft" and not cls.peft_adapter:
        return (f"--format peft: PEFT cannot express method '{method}' ({cls.no_peft_reason}); "
                f"use --format merged or --format adapter")
    return None


@dataclass
class Source:
    """What an export is made from: the run's export/ folder (`checkpoint` None) or one checkpoint."""

    checkpoint: Path | None
    step: int | None
    training: bool  # another process is writing the run right now


def _source(cfg, run, fmt: str) -> Source:
    training = run.in_use()
    cls = method_class(cfg.method.name)
    copies = fmt in ("adapter", "peft") or cls.stock_export
    if copies and not training and run.export.is_dir() and any(run.export.iterdir()):
        latest = latest_checkpoint(run.checkpoints)
        return Source(None, run.read_summary().get("steps") or (checkpoint_step(latest) if latest else None), False)
    latest = latest_checkpoint(run.checkpoints)
    if latest is None and training:
        raise UserError(f"{run.path} is being written by another process and has no complete checkpoint yet; "
                        "export it after its first checkpoint (trainer.save_every)")
    if latest is None:  # an export/ on a stock base (no checkpoint): the run's final step
        return Source(None, run.read_summary().get("steps"), False)
    return Source(latest, checkpoint_step(latest), training)


def export_run(run_dir: str, fmt: str, out: str | None = None, command: str | None = None) -> Path:
    """Write `run_dir`'s model in `fmt` to `out` (default `<run>/export-<fmt>-step<N>`); returns the folder."""
    run = RunFolder.open(run_dir)
    cfg = load_run_config(run)
    method = cfg.method.name
    reason = refusal(method, fmt)
    if reason:
        raise UserError(reason)
    configure_network(cfg)
    quiet_libraries()
    for attempt in range(5):  # a run being written may prune the checkpoint read; then take the newer one
        source = _source(cfg, run, fmt)
        name = f"export-{fmt}" + (f"-step{source.step}" if source.step is not None else "")
        dest = Path(out).expanduser().resolve() if out else run.path / name
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise UserError(f"{dest} exists and is not empty; remove it or pass --out NEW_FOLDER")
        staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            notes = _write(fmt, cfg, run, staging, source)
            command = command or f"sparsetune export run={run.path} --format {fmt}" + (f" --out {out}" if out else "")
            write_model_card(staging, cfg, run, fmt, command, notes, source)
            if dest.exists():
                dest.rmdir()  # empty (checked above)
            os.replace(staging, dest)
            break
        except CheckpointError:
            pruned = source.training and source.checkpoint is not None and not source.checkpoint.exists()
            if not pruned or attempt == 4:
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if source.training:
        console.print(f"the run is still being written by another process: exported its last complete checkpoint, "
                      f"step {source.step}", highlight=False, soft_wrap=True)
    _log_artifact(cfg, run, dest, fmt)
    return dest


# ------------------------------------------------------------------ writers
def _write(fmt: str, cfg, run, path: Path, source: Source) -> list[str]:
    """Write the folder; returns notes for the model card."""
    cls = method_class(cfg.method.name)
    notes = [cls.merged_note] if fmt == "merged" and cls.merged_note else []
    if fmt in ("adapter", "peft") or cls.stock_export:
        _copy_run_export(cfg, run, path, source)
        if fmt == "peft" and not (path / "adapter_config.json").exists():
            raise UserError(f"{run.export} is not a PEFT adapter folder (no adapter_config.json)")
        return notes
    meth, model, tokenizer = _training_model(cfg, run, source=source)
    model.eval()
    meth.export_merged(model, path)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(path)
    return notes


def _copy_run_export(cfg, run, path: Path, source: Source) -> None:
    """The run's `export/` as it is; rebuilt from the checkpoint when the source is one (the run has
    no export/, or is still being written)."""
    if source.checkpoint is None and run.export.is_dir() and any(run.export.iterdir()):
        shutil.copytree(run.export, path)
        return
    meth, model, _ = _training_model(cfg, run, allow_export=False, source=source)
    meth.export(model, path)


def _training_model(cfg, run, allow_export: bool = True, source: Source | None = None):
    """(method, model, tokenizer): the model as training left it, method applied. From the source's
    checkpoint (else the last one); without one, from the run's export on a fresh stock base (a PEFT
    folder, or the method's `load_export`)."""
    ensure_vision_base(cfg.model)  # only a rebuild needs the base (copies of export/ do not)
    job, _ = from_checkpoint(cfg, run, path=source.checkpoint if source is not None else None)
    if job is not None:
        return job.method, job.model, job.tokenizer
    if allow_export and run.export.is_dir():
        seed_everything(cfg.seed)  # a `source=config` base is built from the seed
        base, tokenizer = load_model(cfg.model)
        method = build_method(cfg.method)
        if (run.export / "adapter_config.json").exists():
            return method, PeftModel.from_pretrained(base, str(run.export)), tokenizer
        model = method.load_export(base, run.export)
        if model is not None:
            return method, model, tokenizer
    raise UserError(f"run has no checkpoint or loadable export to rebuild its model from: {run.path}")


# ------------------------------------------------------------------ model card
def _how_to_load(fmt: str, method: str, task: str) -> str:
    auto = "AutoModelForImageClassification" if task == "image_classification" else "AutoModelForCausalLM"
    cls = method_class(method)
    if fmt == "peft" or (fmt == "adapter" and cls.peft_adapter):
        return (f"```python\nfrom peft import PeftModel\nfrom transformers import {auto}\n\n"
                f"base = {auto}.from_pretrained(BASE_MODEL)\nmodel = PeftModel.from_pretrained(base, \"THIS_FOLDER\")\n```")
    if fmt == "merged" or cls.stock_export:
        return f"```python\nfrom transformers import {auto}\n\nmodel = {auto}.from_pretrained(\"THIS_FOLDER\")\n```"
    return ("sparsetune's own format: `sparsetune eval run=RUN_DIR` loads it on a fresh stock base "
            f"(`{method}`'s `load_export`).")


def _metric_rows(summary: dict[str, Any]) -> list[str]:
    rows = [f"| {task} | {name} | {_fmt(value)} |" for task, metrics in (summary.get("eval") or {}).items()
            if isinstance(metrics, dict) for name, value in metrics.items() if _is_number(value)]
    rows += [f"| run | {key} | {_fmt(value)} |" for key, value in summary.items() if _is_number(value)]
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _step_text(source: Source | None, cfg) -> str:
    """"80 of 80", "10 of 80 (the run was still training)", or "unknown"."""
    if source is None or source.step is None:
        return "unknown"
    text = at_step(source.step, cfg).removeprefix(", step ")
    where = f"checkpoint `{source.checkpoint.name}`" if source.checkpoint is not None else "the run's export/"
    return f"{text}, from {where}" + (" (the run was still training)" if source.training else "")


def write_model_card(path: Path, cfg, run, fmt: str, command: str, notes: list[str],
                     source: Source | None = None) -> Path:
    """README.md: method, base model, data, the training step, the run's metrics, how to load, the
    commands. A README the method wrote itself (EViT, SPT) is kept below, under "Method notes". The
    metrics of a run still being written are left out: its summary.json is not this step's."""
    method, model_cfg = cfg.method.name, cfg.model
    base = model_cfg.name_or_path or model_cfg.name
    training = source is not None and source.training
    summary = {} if training else run.read_summary()
    overrides = (run.path / "overrides.txt")
    made_by = overrides.read_text().strip() if overrides.exists() else ""
    library = "peft" if fmt == "peft" or (fmt == "adapter" and method_class(method).peft_adapter) else "transformers"
    own = (path / "README.md").read_text().strip() if (path / "README.md").exists() else ""
    rows = _metric_rows(summary)
    lines = [
        "---", f"library_name: {library}", f"base_model: {base}", f"tags: [sparsetune, {method}]", "---", "",
        f"# {run.path.name} ({method}, {fmt}"
        + (f", step {source.step})" if source is not None and source.step is not None else ")"), "",
        "| | |", "|---|---|",
        f"| method | `{method}` |", f"| base model | `{base}` (sparsetune model `{model_cfg.name}`, source {model_cfg.source}) |",
        f"| data | `{cfg.data.name}` |", f"| format | {fmt} |", f"| recipe | {cfg.recipe or '-'} |",
        f"| training step | {_step_text(source, cfg)} |", "",
        "## Metrics", "",
        *(["From the run's summary.json: held-out eval per task, then the run's own figures (`run` rows).", "",
           "| task | metric | value |", "|---|---|---|", *rows]
          if rows else [f"The run was still training (step {source.step}): it has no final metrics yet."
                        if training else "The run recorded no metrics (summary.json has none)."]), "",
        "## How to load", "", _how_to_load(fmt, method, model_cfg.task), "",
        "## Provenance", "",
        f"- this folder: `{command}`",
        *([f"- the run: `sparsetune {made_by}`"] if made_by else []),
        f"- method settings: `{json.dumps(_method_settings(cfg), default=str)}`", "",
        *(["## Notes", "", *[f"- {n}" for n in notes], ""] if notes else []),
        *(["## Method notes", "", own, ""] if own else []),
    ]
    (path / "README.md").write_text("\n".join(lines))
    return path / "README.md"


def _method_settings(cfg) -> dict[str, Any]:
    m = cfg.method
    return OmegaConf.to_container(m, resolve=True) if OmegaConf.is_config(m) else dict(m)


# ------------------------------------------------------------------ W&B
def _log_artifact(cfg, run, dest: Path, fmt: str) -> None:
    """The export as a W&B model Artifact in its own run (job_type export) when W&B is on."""
    if "wandb" not in cfg.logger.backends:
        return
    lcfg = OmegaConf.merge(cfg.logger, {"backends": ["wandb"]})
    logger = build_logger(lcfg, run.path, OmegaConf.to_container(cfg, resolve=True), f"{run.path.name}-export",
                          job="export")
    try:
        logger.log_artifact(dest, name=f"{run.path.name}-{fmt}".replace("/", "-"), kind="model",
                            metadata={"format": fmt, "method": cfg.method.name, "base_model": cfg.model.name})
    finally:
        logger.close()
