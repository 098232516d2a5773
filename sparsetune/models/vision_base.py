"""The project's own ViT base (no clean pretrained ViT ships in a package): pretrained on
Fashion-MNIST by `recipe=vit_fmnist`, cached, and built on first use when absent."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from sparsetune.paths import cache_dir

BUILD_RECIPE = "vit_fmnist"
BUILD_OVERRIDES: list[str] = []  # appended to the build's overrides (tests shorten the run)


def vision_base_folder(cfg) -> Path:
    """Folder of the cached base model named `cfg.name_or_path`; trains it once if missing."""
    folder = cache_dir("models") / cfg.name_or_path
    if (folder / "config.json").exists():
        return folder
    Console(stderr=True).print(
        f"[bold]vision base '{cfg.name_or_path}' not cached yet: pretraining it once with "
        f"recipe={BUILD_RECIPE} (a few minutes on a CPU)…[/bold]")
    from sparsetune.config import compose
    from sparsetune.train.job import run_job

    overrides = [f"recipe={BUILD_RECIPE}", f"cache_as={cfg.name_or_path}", "logger=quiet",
                 f"run_dir={cache_dir('models', '_builds')}", *BUILD_OVERRIDES]
    run_job(compose(overrides), overrides)
    return folder
