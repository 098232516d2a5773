"""Writing and reading a pruned model's export folder: a stock HF checkpoint (hidden_size = d') plus
pat.json, shared by PAT and the prune-then-LoRA baseline so both folders look and load the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoModelForCausalLM

from .compare import export_figures


def write_pruned_export(pruned: nn.Module, path: Path, tokenizer, info: dict[str, Any], params_before: int,
                        baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Save `pruned` + tokenizer + pat.json (`info` plus parameter counts) under `path`; returns the
    summary.json figures (sizes, params ratio, the unpruned baseline's results when given)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pruned.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    params_after = sum(p.numel() for p in pruned.parameters())
    info = {**info, "params_before": params_before, "params_after": params_after,
            "tied_embeddings": bool(getattr(pruned.config, "tie_word_embeddings", False))}
    (path / "pat.json").write_text(json.dumps(info, indent=1))
    exported = {**export_figures(path), "params_ratio": round(params_after / params_before, 4)}
    if baseline is not None:
        exported["baseline"] = baseline
    return exported


def load_pruned_export(model: nn.Module, path: Path) -> nn.Module | None:
    """The exported pruned model itself (`sparsetune eval run=DIR`); `model` only supplies the dtype.
    None when `path` is not such a folder."""
    path = Path(path)
    if not (path / "pat.json").exists() or not (path / "config.json").exists():
        return None

    return AutoModelForCausalLM.from_pretrained(path, dtype=next(model.parameters()).dtype).eval()
