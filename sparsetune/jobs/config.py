"""Configs as jobs see them: composed and validated with the method registry's schemas."""

from __future__ import annotations

from sparsetune.config.checks import forbid_stored_trust_remote_code
from sparsetune.config.compose import carry_renamed_keys, compose, validate
from sparsetune.config.store import register_schemas
from sparsetune.engine.run_folder import RunFolder
from sparsetune.methods import REGISTRY, method_class


def method_schema(name: str) -> type:
    return method_class(name).config_class


def register_method_schemas() -> None:
    """Put every method's config dataclass (and the shared schemas) in Hydra's ConfigStore (once)."""
    if not _registered:
        schemas = {}
        for name in REGISTRY:
            try:
                schemas[name] = method_schema(name)
            except (ImportError, AttributeError):  # a broken method fails when it is used, not here
                continue
        register_schemas(schemas)
        _registered.append(True)


_registered: list[bool] = []


def compose_job(overrides: list[str] | None = None):
    """Compose a recipe with overrides; method keys are checked against the method's own schema."""
    register_method_schemas()
    return compose(overrides, method_schema=method_schema)


def validate_job(cfg, recipe: str | None = None):
    register_method_schemas()
    return validate(cfg, recipe=recipe, method_schema=method_schema)


def load_run_config(run: RunFolder, overrides: list[str] | None = None):
    """A run folder's stored config, validated again (a hand-edited config.yaml fails here).

    A stored config never switches on `model.trust_remote_code`: it loads with the flag off unless
    `overrides` (this command line) pass `model.trust_remote_code=true` again. One written by an older
    version loads with renamed method keys carried over (`method.lora_r` -> `method.r`, silently)."""
    raw = forbid_stored_trust_remote_code(run.load_raw_config(), overrides)
    return validate_job(carry_renamed_keys(raw, method_schema))
