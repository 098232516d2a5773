"""LoRA and DoRA baselines through PEFT, targeted by role names that `arch` resolves per family."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model

from sparsetune.errors import ConfigError
from sparsetune.methods.base import Method
from sparsetune.models.arch import expand_roles

from .config import DoRAConfig, LoRAConfig


def resolve_targets(arch, targets: list[str]) -> list[str]:
    """Role names (or aliases / groups, models/arch.py) → the module paths PEFT matches (suffixes inside each block)."""
    names = arch.linear_names()
    out = []
    for target, role in ((t, r) for t in targets for r in expand_roles([t], names)):
        if role not in names:
            raise ConfigError(f"method.target_modules: '{target}' is not a linear of a {arch.family} block; "
                              f"available: {', '.join(names)}")
        out.append(names[role])
    return out


class LoRA(Method):
    strategies = ("ddp", "fsdp")
    stock_export = False  # export/ is a PEFT adapter folder; merged = PEFT's merge_and_unload
    peft_adapter = True
    config_class = LoRAConfig
    use_dora = False

    def apply(self, model, ctx):
        self.ctx, arch = ctx, ctx.arch
        suffixes = resolve_targets(arch, list(self.cfg.target_modules))
        block_prefix = arch.name_of(arch.blocks[0].module).rsplit(".", 1)[0]
        pattern = rf"{block_prefix.replace('.', '[.]')}[.]\d+[.]({'|'.join(s.replace('.', '[.]') for s in suffixes)})"
        config = LoraConfig(
            r=self.cfg.r, lora_alpha=self.cfg.alpha, lora_dropout=self.cfg.dropout, target_modules=pattern,
            use_dora=self.use_dora, bias="none",
            modules_to_save=[arch.name_of(arch.head).split(".")[-1]] if self.cfg.train_head else None,
        )
        return get_peft_model(model, config)

    def export(self, model, path: Path) -> Path:
        """The PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        return path

    def export_merged(self, model, path: Path) -> Path:
        """A stock HF folder: the adapter merged into the base weights by PEFT's `merge_and_unload`
        (in place: `model` is the merged stock model afterwards)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.merge_and_unload().save_pretrained(path)
        return path


class DoRA(LoRA):
    config_class = DoRAConfig
    use_dora = True
