"""One source of truth for defaults: the dataclass schemas (in Hydra's ConfigStore); option YAMLs hold
only what differs from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sparsetune.config import schema as S
from sparsetune.config.compose import RECIPES_DIR, options
from sparsetune.jobs.config import compose_job, method_schema
from sparsetune.methods import REGISTRY

GROUP_SCHEMAS = {"model": S.ModelConfig, "data": S.DataConfig, "trainer": S.TrainerConfig,
                 "eval": S.EvalConfig, "logger": S.LoggerConfig}
# keys that say what an option *is*; kept even when they equal the default
IDENTITY = {"model": {"name", "source", "task"}, "data": {"name", "kind", "source"}, "method": {"name"}}


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _load(group: str, name: str) -> dict:
    return yaml.safe_load((RECIPES_DIR / group / f"{name}.yaml").read_text()) or {}


def _inherited(group: str, data: dict) -> dict:
    """Values an option gets from the options in its own defaults list (gslora_pp: gslora)."""
    out: dict = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            parent = _load(group, entry)
            out.update(_inherited(group, parent))
            out.update({k: v for k, v in parent.items() if k != "defaults"})
    return out


def _cases():
    for group in ("model", "data", "method", "trainer", "eval", "logger"):
        for name in options(group):
            yield group, name


@pytest.mark.parametrize("group,name", list(_cases()))
def test_option_yaml_holds_only_what_differs_from_the_schema(group, name):
    data = _load(group, name)
    schema = method_schema(data.get("name", "full")) if group == "method" else GROUP_SCHEMAS[group]
    base = {**_defaults(schema), **_inherited(group, data)}
    repeated = [k for k, v in data.items()
                if k != "defaults" and k not in IDENTITY.get(group, ()) and k in base and base[k] == v]
    assert not repeated, (f"recipes/{group}/{name}.yaml repeats schema defaults {repeated} "
                          f"({schema.__name__}); delete them, the schema fills them in")


def test_option_yaml_keys_exist_in_the_schema():
    for group, name in _cases():
        data = _load(group, name)
        schema = method_schema(data.get("name", "full")) if group == "method" else GROUP_SCHEMAS[group]
        fields = {f.name for f in dataclasses.fields(schema)}
        assert set(data) - {"defaults"} <= fields, (group, name)


def test_schemas_are_registered_in_the_config_store():
    from hydra.core.config_store import ConfigStore

    from sparsetune.config.store import CONFIG_NAME, is_registered, registered_method_schema

    compose_job([])
    repo = ConfigStore.instance().repo
    assert f"{CONFIG_NAME}.yaml" in repo
    for group in ("model", "data", "trainer", "eval", "logger", "bench", "forget"):
        assert is_registered("default", f"schema/{group}"), group
    for name in REGISTRY:
        assert is_registered(name, "schema/method"), name
        assert registered_method_schema(name) is method_schema(name)


@pytest.mark.parametrize("name", options("method"))
def test_method_defaults_come_from_its_dataclass(name):
    """Every method key the YAML leaves out is the dataclass default, typed by it."""
    from omegaconf import OmegaConf

    cfg = compose_job([f"method={name}"])
    schema = method_schema(name)
    data = _load("method", name)
    given = {k: v for k, v in {**_inherited("method", data), **data}.items() if k != "defaults"}
    expected = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), given))
    assert OmegaConf.to_container(cfg.method) == expected
    assert set(cfg.method) == {f.name for f in dataclasses.fields(schema)}


def test_default_groups_equal_the_schema_defaults():
    from omegaconf import OmegaConf

    cfg = compose_job([])
    for group in ("trainer", "eval", "logger"):
        assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(
            OmegaConf.structured(GROUP_SCHEMAS[group])), group


def test_config_only_compose_uses_registered_method_schemas():
    """After the jobs layer registered the method schemas, a plain `compose` fills method defaults too."""
    from sparsetune.config import compose

    compose_job([])  # registers
    cfg = compose(["method=lora"])
    assert cfg.method.r == 16 and list(cfg.method.target_modules) == ["q", "k", "v", "up", "down"]


def test_recipes_still_compose_with_their_values():
    cfg = compose_job(["recipe=gslora_vit"])
    assert cfg.method.name == "gslora" and cfg.method.r == 8 and cfg.method.group_alpha == pytest.approx(50.0)
    cfg = compose_job(["method=gslora_full"])
    assert cfg.method.train == "full" and cfg.method.group_alpha == 0.0 and cfg.method.lr == pytest.approx(1e-4)
    cfg = compose_job(["method=pat"])
    assert cfg.method.rank == "auto" and cfg.method.mask_lr == pytest.approx(0.01)
    cfg = compose_job(["data=fashion_mnist"])
    assert cfg.data.kind == "vision" and cfg.data.val_size == 5000 and cfg.data.image_size == 28
    assert Path(RECIPES_DIR / "trainer" / "default.yaml").exists()
