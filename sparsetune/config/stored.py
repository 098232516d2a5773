"""A run folder's stored config.yaml: the sparsetune version that wrote it, and the keys it lacks.

Validating a stored config again merges it onto today's schemas, which fills every key it lacks (one
written by another version, or edited by hand) with today's default, silently. `missing_keys` names
those keys so the jobs layer can say so (`eval run=`, `export`) or refuse (`resume=`, for a key that
shapes training); the version tells the user where the config came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from sparsetune import __version__
from sparsetune.errors import ConfigError

VERSION_KEY = "sparsetune_version"  # top-level key of a stored config.yaml, outside the schemas


def stored_yaml(config_yaml: str) -> str:
    """config.yaml as a run folder stores it: the version line, then the resolved config."""
    return yaml.safe_dump({VERSION_KEY: __version__}) + config_yaml


def pop_version(raw) -> str | None:
    """Take the version key out of a stored config (in place); None for a config from before it existed."""
    value = raw.pop(VERSION_KEY, None) if hasattr(raw, "pop") else None
    return None if value is None else str(value)


def _leaves(schema: type, prefix: str) -> list[str]:
    out = []
    for f in dataclasses.fields(schema):
        factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        default = factory() if factory is not None else None
        if dataclasses.is_dataclass(default):
            out += _leaves(type(default), f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def missing_keys(raw: Mapping, method_schema: Callable[[str], type] | None = None) -> list[str]:
    """Every schema key (dotted, `method.*` from the stored method's schema) that `raw` does not hold."""
    from sparsetune.config.schema import Config

    method = raw.get("method")
    name = method.get("name", "full") if hasattr(method, "get") else "full"
    keys = [k for k in _leaves(Config, "") if k != "method"]
    if method_schema is not None:
        try:
            keys += _leaves(method_schema(name), "method.")
        except (ConfigError, ImportError, AttributeError):  # an unknown method: validate says so
            pass
    return [k for k in keys if not _holds(raw, k)]


def _holds(node: Any, key: str) -> bool:
    for part in key.split("."):
        if not hasattr(node, "get") or part not in node:
            return False
        node = node[part]
    return True


def show(value: Any) -> str:
    """A config value as the user would type it (null, true, [a, b])."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None or isinstance(value, (bool, list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()
    return str(value)


def origin(version: str | None) -> str:
    return (f"written by sparsetune {version}" if version
            else "no sparsetune version recorded: written before configs recorded it, or edited by hand")
