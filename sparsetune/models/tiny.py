"""Tiny random-weight models and an offline byte-level tokenizer, for tests and quick benchmarks."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import yaml
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    PreTrainedTokenizerFast,
)

from sparsetune.config.compose import RECIPES_DIR


@lru_cache(maxsize=1)
def byte_tokenizer():
    """A 259-token byte-level tokenizer (256 bytes + bos/eos/pad) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"<0x{i:02X}>": i for i in range(256)}
    specials = {"<s>": 256, "</s>": 257, "<pad>": 258}
    vocab.update(specials)
    # byte-level pre-tokenizer maps every byte to a printable symbol; map those symbols to ids
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    byte_map = dict(zip(sorted(alphabet, key=lambda c: _byte_of(c)), range(256)))
    vocab_bl = {sym: i for sym, i in byte_map.items()}
    vocab_bl.update(specials)
    tok = Tokenizer(models.BPE(vocab=vocab_bl, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    return fast


def _byte_of(symbol: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode for one symbol."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip((chr(c) for c in cs), bs))[symbol]


def build_tiny(model_type: str, config: dict[str, Any], task: str = "causal_lm", seed: int = 0):
    """Random-weight stock HF model of the given type (no download)."""
    hf_config = AutoConfig.for_model(model_type, **dict(config))
    torch.manual_seed(seed)
    if task == "image_classification":
        return AutoModelForImageClassification.from_config(hf_config)
    tok = byte_tokenizer()
    hf_config.bos_token_id, hf_config.eos_token_id, hf_config.pad_token_id = (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(hf_config)
    return model


def tiny_preset(name: str, seed: int = 0, random_biases: bool = True):
    """The `recipes/model/tiny_<name>.yaml` model with random weights; biases random too (HF starts them
    at 0, which would hide bias bugs in tests of slicing, permutation or sparse attention)."""
    spec = yaml.safe_load((RECIPES_DIR / "model" / f"tiny_{name}.yaml").read_text())
    model = build_tiny(spec["model_type"], spec["config"], task=spec.get("task", "causal_lm"), seed=seed)
    if random_biases:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith(".bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model
