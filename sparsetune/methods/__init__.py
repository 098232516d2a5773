"""Method registry: name -> "module:Class", and name -> "module:ConfigClass" for its config. Adding a
method is these two lines — or, for a method that lives in another package, one entry point in that
package's metadata:

    [project.entry-points."sparsetune.methods"]
    my_method = "my_package.method:MyMethod"

Entry points are read when this module is imported (so every process of a multi-process run, and
every sweep point, finds the same methods); a built-in name always wins over a plug-in's.

CONFIGS names modules that import neither torch nor the method's layers (each method's `config.py`):
the CLI composes and checks a command line with them, so a bad value is refused before torch loads
(tests/cli/test_startup.py). A plug-in's config class is read from its method class."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from sparsetune.errors import ConfigError

REGISTRY: dict[str, str] = {
    "full": "sparsetune.methods.full:FullFineTune",
    "lora": "sparsetune.methods.lora.method:LoRA",
    "dora": "sparsetune.methods.lora.method:DoRA",
    "s2ft": "sparsetune.methods.s2ft.method:S2FT",
    "spt": "sparsetune.methods.spt.method:SPT",
    "pat": "sparsetune.methods.pat.method:PAT",
    "prune_lora": "sparsetune.methods.pat.baseline:PruneLoRA",
    "gslora": "sparsetune.methods.gslora.method:GSLoRA",
    "gslora_pp": "sparsetune.methods.gslora.method:GSLoRAPlus",
    "gslora_nogs": "sparsetune.methods.gslora.method:NoSparsity",
    "gslora_full": "sparsetune.methods.gslora.method:FullForget",
    "gslora_retrain": "sparsetune.methods.gslora.method:Retrain",
    "evit": "sparsetune.methods.evit.method:EViT",
}
# name -> "module:ConfigClass": the method's config dataclass, importable without torch
CONFIGS: dict[str, str] = {
    "full": "sparsetune.config.schema:MethodConfig",
    "lora": "sparsetune.methods.lora.config:LoRAConfig",
    "dora": "sparsetune.methods.lora.config:DoRAConfig",
    "s2ft": "sparsetune.methods.s2ft.config:S2FTConfig",
    "spt": "sparsetune.methods.spt.config:SPTConfig",
    "pat": "sparsetune.methods.pat.config:PATConfig",
    "prune_lora": "sparsetune.methods.pat.config:PruneLoRAConfig",
    "gslora": "sparsetune.methods.gslora.config:GSLoRAConfig",
    "gslora_pp": "sparsetune.methods.gslora.config:GSLoRAPlusConfig",
    "gslora_nogs": "sparsetune.methods.gslora.config:NoSparsityConfig",
    "gslora_full": "sparsetune.methods.gslora.config:FullForgetConfig",
    "gslora_retrain": "sparsetune.methods.gslora.config:RetrainConfig",
    "evit": "sparsetune.methods.evit.config:EViTConfig",
}
BUILT_IN = frozenset(REGISTRY)
PLUGIN_GROUP = "sparsetune.methods"


def load_plugins() -> dict[str, str]:
    """Add the methods installed packages register under the `sparsetune.methods` entry-point group;
    returns them (built-in names are never replaced)."""
    found = {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP) if ep.name not in BUILT_IN}
    REGISTRY.update(found)
    return found


load_plugins()


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def method_class(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(REGISTRY))}")
    return _load(REGISTRY[name])


def config_class(name: str) -> type:
    """The method's config dataclass, without importing the method (CONFIGS); a plug-in's from its class."""
    if name in CONFIGS and name in BUILT_IN:
        return _load(CONFIGS[name])
    return method_class(name).config_class


def lazy_exports(package: str, names: dict[str, str]):
    """A method package's module `__getattr__` (PEP 562): `names` maps each public name to the submodule
    (relative, ".method") that defines it, imported on first use. The package's light config module
    imports eagerly; its layers (and torch) load only when a name from them is used."""

    def __getattr__(attr: str):
        if attr not in names:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(importlib.import_module(names[attr], package), attr)

    return __getattr__


def build_method(cfg):
    """Instantiate the method named by cfg.name from its (validated) config."""
    return method_class(cfg.name)(cfg)
