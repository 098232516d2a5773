"""The project's own ViT base (no clean pretrained ViT ships in a package): pretrained on
Fashion-MNIST by `recipe=vit_fmnist`, cached, and built here, by the job layer, on first use.
Loading a model never trains one; a job that needs the base asks for it first."""

from __future__ import annotations

from pathlib import Path

from sparsetune.engine.progress import console
from sparsetune.jobs.config import compose_job
from sparsetune.jobs.train import run_train
from sparsetune.models.loading import vision_base_folder
from sparsetune.paths import cache_dir

BUILD_RECIPE = "vit_fmnist"
BUILD_OVERRIDES: list[str] = []  # appended to the build's overrides (tests shorten the run)


def ensure_vision_base(model_cfg) -> Path | None:
    """Train and cache the ViT base once when a config names it and it is missing."""
    if model_cfg.source != "vision_base":
        return None
    folder = vision_base_folder(model_cfg)
    if (folder / "config.json").exists():
        return folder
    console.print(f"[bold]vision base '{model_cfg.name_or_path}' not cached yet: pretraining it once with "
                  f"recipe={BUILD_RECIPE} (a few minutes on a CPU)…[/bold]")

    overrides = [f"recipe={BUILD_RECIPE}", f"cache_as={model_cfg.name_or_path}", "logger=quiet",
                 f"run_dir={cache_dir('models', '_builds')}", *BUILD_OVERRIDES]
    run_train(compose_job(overrides), overrides)
    return folder
