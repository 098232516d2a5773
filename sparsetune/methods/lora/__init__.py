"""LoRA and DoRA baselines through PEFT (`method.py`); their config (`config.py`) imports neither torch
nor PEFT, so the CLI checks a command line before loading them."""

from sparsetune.methods import lazy_exports

from .config import DoRAConfig, LoRAConfig, check_lora

__getattr__ = lazy_exports(__name__, {"LoRA": ".method", "DoRA": ".method", "resolve_targets": ".method"})
__all__ = ["LoRA", "DoRA", "LoRAConfig", "DoRAConfig", "check_lora", "resolve_targets"]
