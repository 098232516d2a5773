"""Tokenised prompt -> answer items for causal-LM fine-tuning, with the loss on the answer only.

Each item is `format_prompt(prompt, template, tokenizer) + answer + eos` (template `chat`: the
tokenizer's chat template, see data.prompts). Prompt and answer are tokenised
separately, so the boundary between them is exact (labels are -100 on every prompt token, including
a BOS the tokenizer adds, and equal to input_ids on the answer and the closing eos). Too-long items
lose tokens from the left of the prompt; the answer is kept whole unless it alone exceeds three
quarters of `max_length`, in which case it is cut from the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from sparsetune.data.prompts import format_prompt
from sparsetune.data.types import Example

IGNORE_INDEX = -100


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's default encoding starts with BOS (Llama-2 yes, SmolLM2/GPT-2 no)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def pad_token_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_pair(prompt_ids: Sequence[int], answer_ids: Sequence[int], max_length: int,
                bos_id: Optional[int] = None, eos_id: Optional[int] = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one item, truncated to `max_length` as the module docstring says."""
    head = [bos_id] if bos_id is not None else []
    tail = list(answer_ids) + ([eos_id] if eos_id is not None else [])
    prompt = list(prompt_ids)
    budget = max_length - len(head)
    if budget < 2:
        raise ValueError(f"max_length={max_length} is too small for a prompt and an answer")
    if len(prompt) + len(tail) > budget:
        tail = tail[: max(1, budget - min(len(prompt), budget // 4))]
        keep = budget - len(tail)
        prompt = prompt[len(prompt) - keep:] if keep > 0 else []
    input_ids = head + prompt + tail
    labels = [IGNORE_INDEX] * (len(head) + len(prompt)) + tail
    return input_ids, labels


class TextDataset(Dataset):
    """Examples tokenised once, up front (fast tokenizers encode a list in one call)."""

    def __init__(self, examples: Sequence[Example], tokenizer: Any, max_length: int, template: str = "alpaca",
                 add_bos: Optional[bool] = None):
        self.examples = list(examples)
        self.max_length = int(max_length)
        self.template = template
        bos = tokenizer.bos_token_id if (tokenizer_adds_bos(tokenizer) if add_bos is None else add_bos) else None
        eos = getattr(tokenizer, "eos_token_id", None)
        prompts = [format_prompt(ex.prompt, template, tokenizer) for ex in self.examples]
        answers = [ex.answer for ex in self.examples]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
        self.items = [encode_pair(p, a, self.max_length, bos, eos) for p, a in zip(prompt_ids, answer_ids)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids, labels = self.items[index]
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long)}

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.items)


def collate_text(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of items to the longest; pads get attention 0 and label -100."""
    if not items:
        raise ValueError("collate_text got an empty batch")
    width = max(len(it["input_ids"]) for it in items)
    input_ids = torch.full((len(items), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        input_ids[row, :n] = it["input_ids"]
        labels[row, :n] = it["labels"]
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
