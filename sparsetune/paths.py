"""Where sparsetune keeps caches (prepared data, converted models) and run folders."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """$SPARSETUNE_CACHE or ~/.cache/sparsetune, joined with `parts` (created)."""
    root = Path(os.environ.get("SPARSETUNE_CACHE") or Path.home() / ".cache" / "sparsetune")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_root(configured: str | None = None) -> Path:
    """Run folders go under `run_dir=`, else $SPARSETUNE_RUNS, else ./runs."""
    return Path(configured or os.environ.get("SPARSETUNE_RUNS") or "runs").resolve()
