"""Method registry: name -> "module:Class". Adding a method is one line here — or, for a method that
lives in another package, one entry point in that package's metadata:

    [project.entry-points."sparsetune.methods"]
    my_method = "my_package.method:MyMethod"

Entry points are read when this module is imported (so every process of a multi-process run, and
every sweep point, finds the same methods); a built-in name always wins over a plug-in's."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from sparsetune.errors import ConfigError

REGISTRY: dict[str, str] = {
    "full": "sparsetune.methods.full:FullFineTune",
    "lora": "sparsetune.methods.lora:LoRA",
    "dora": "sparsetune.methods.lora:DoRA",
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
BUILT_IN = frozenset(REGISTRY)
PLUGIN_GROUP = "sparsetune.methods"


def load_plugins() -> dict[str, str]:
    """Add the methods installed packages register under the `sparsetune.methods` entry-point group;
    returns them (built-in names are never replaced)."""
    found = {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP) if ep.name not in BUILT_IN}
    REGISTRY.update(found)
    return found


load_plugins()


def method_class(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(cfg):
    """Instantiate the method named by cfg.name from its (validated) config."""
    return method_class(cfg.name)(cfg)
