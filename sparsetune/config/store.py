"""The dataclass schemas in Hydra's ConfigStore: the one source of truth for defaults.

Option YAMLs under recipes/ hold only what differs from these schemas; `validate` merges every
composed group onto its schema, which fills in the rest. The method schemas live in the methods
layer, so the jobs layer passes them in (`register_schemas(method_schemas)`); config never imports
methods.

Stored names (kept apart from the YAML options so they never shadow a recipe file):
  sparsetune_config           the top-level `Config`
  schema/<group>/default      ModelConfig, DataConfig, TrainerConfig, EvalConfig, LoggerConfig, ...
  schema/method/<name>        each method's config dataclass
"""

from __future__ import annotations

from collections.abc import Mapping

from sparsetune.config.schema import (
    BenchConfig,
    Config,
    DataConfig,
    EvalConfig,
    ForgetConfig,
    LoggerConfig,
    MethodConfig,
    ModelConfig,
    TrainerConfig,
)

CONFIG_NAME = "sparsetune_config"
SCHEMA_GROUP = "schema"
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "logger": LoggerConfig,
    "bench": BenchConfig,
    "forget": ForgetConfig,
}

_methods: dict[str, type] = {}


def register_schemas(method_schemas: Mapping[str, type] | None = None) -> None:
    """Store `Config`, every group schema and the given method schemas (name -> dataclass).

    Idempotent; later calls add (or replace) method schemas."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name=CONFIG_NAME, node=Config)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=f"{SCHEMA_GROUP}/{group}", name="default", node=schema)
    methods = {"full": MethodConfig, **dict(method_schemas or {})}
    for name, schema in methods.items():
        cs.store(group=f"{SCHEMA_GROUP}/method", name=name, node=schema)
        _methods[name] = schema


def registered_method_schema(name: str) -> type | None:
    """The method schema registered under `name`, if the jobs layer registered it."""
    return _methods.get(name)


def is_registered(name: str, group: str | None = None) -> bool:
    """Whether ConfigStore holds `name` (in `group`, e.g. "schema/method")."""
    from hydra.core.config_store import ConfigStore

    repo = ConfigStore.instance().repo
    node = repo
    for part in (group.split("/") if group else []):
        node = node.get(part)
        if not isinstance(node, dict):
            return False
    return f"{name}.yaml" in node
