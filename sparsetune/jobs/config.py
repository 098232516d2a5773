"""Configs as jobs see them: composed and validated with the method registry's schemas."""

from __future__ import annotations

from sparsetune.config.compose import compose, validate
from sparsetune.engine.run_folder import RunFolder
from sparsetune.methods import method_class


def method_schema(name: str) -> type:
    return method_class(name).config_class


def compose_job(overrides: list[str] | None = None):
    """Compose a recipe with overrides; method keys are checked against the method's own schema."""
    return compose(overrides, method_schema=method_schema)


def validate_job(cfg, recipe: str | None = None):
    return validate(cfg, recipe=recipe, method_schema=method_schema)


def load_run_config(run: RunFolder):
    """A run folder's stored config, validated again (a hand-edited config.yaml fails here)."""
    return validate_job(run.load_raw_config())
