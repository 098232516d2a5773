"""Method registry: name -> "module:Class". Adding a method is one line here."""

from __future__ import annotations

import importlib

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


def method_class(name: str):
    if name not in REGISTRY:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(cfg):
    """Instantiate the method named by cfg.name from its (validated) config."""
    return method_class(cfg.name)(cfg)
