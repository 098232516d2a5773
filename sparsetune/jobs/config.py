"""Configs as jobs see them: composed and validated with the method registry's schemas."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from sparsetune.config.checks import forbid_stored_trust_remote_code
from sparsetune.config.compose import carry_renamed_keys, compose, validate
from sparsetune.config.store import register_schemas
from sparsetune.config.stored import missing_keys, origin, pop_version, show
from sparsetune.engine.run_folder import RunFolder
from sparsetune.methods import REGISTRY, config_class

# `sparsetune export --format`: here, so the CLI refuses a typo before the export job (and torch) loads
EXPORT_FORMATS = ("merged", "adapter", "peft")


def method_schema(name: str) -> type:
    """The method's config dataclass, read without importing the method (or torch)."""
    return config_class(name)


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


@dataclass
class StoredConfig:
    """A run folder's config.yaml, read: `raw` as stored (version key taken out, renamed method keys
    carried over, `model.trust_remote_code` off unless asked again), the version that wrote it, and the
    schema keys it lacks (each would take today's default)."""

    run: RunFolder
    raw: Any
    version: str | None
    missing: list[str]

    def fill_line(self, key: str, cfg) -> str:
        return (f"warning: {self.run.config_path} has no {key} ({origin(self.version)}); "
                f"using today's default {key}={show(OmegaConf.select(cfg, key))}")


def read_stored_config(run: RunFolder, overrides: list[str] | None = None) -> StoredConfig:
    raw = forbid_stored_trust_remote_code(run.load_raw_config(), overrides)
    version = pop_version(raw)
    carry_renamed_keys(raw, method_schema)
    return StoredConfig(run, raw, version, missing_keys(raw, method_schema))


def load_run_config(run: RunFolder, overrides: list[str] | None = None):
    """A run folder's stored config, validated again (a hand-edited config.yaml fails here).

    A stored config never switches on `model.trust_remote_code`: it loads with the flag off unless
    `overrides` (this command line) pass `model.trust_remote_code=true` again. One written by an older
    version loads with renamed method keys carried over (`method.lora_r` -> `method.r`, silently), and
    each key it lacks takes today's default with one line on stderr naming the key and the value
    (`eval run=`, `export`; `resume=` refuses instead where the key shapes training: jobs/resume.py).
    The file itself is never rewritten here."""
    stored = read_stored_config(run, overrides)
    cfg = validate_job(stored.raw)
    for key in stored.missing:
        print(stored.fill_line(key, cfg), file=sys.stderr)
    return cfg
