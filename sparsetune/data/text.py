"""Tokenised prompt -> answer items for causal-LM fine-tuning, with the loss on the answer only.

Each item is `format_prompt(prompt, template, tokenizer) + answer + eos` (template `chat`: the
tokenizer's chat template, see data.prompts). Prompt and answer are tokenised
separately, so the boundary between them is exact (labels are -100 on every prompt token, including
a BOS the tokenizer adds, and equal to input_ids on the answer and the closing eos). Too-long items
lose tokens from the left of the prompt; the answer is kept whole unless it alone exceeds three
quarters of `max_length`, in which case it is cut from the right. How many items were cut is
warned about once, when the dataset is built.
"""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from sparsetune.data.prompts import format_prompt
from sparsetune.data.types import Example

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


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
    """Examples tokenised when an item is read, so a large file's token ids are never all in memory.

    One pass up front, a chunk at a time (fast tokenizers encode a list in one call), counts the
    tokens and the rows longer than `max_length`; those are truncated as the module docstring says,
    with one warning that gives their number. Items are the ones tokenising everything up front
    gave (the tokenizer encodes a text the same alone or in a batch; tests/data check it).
    """

    CHUNK = 1024

    def __init__(self, examples: Sequence[Example], tokenizer: Any, max_length: int, template: str = "alpaca",
                 add_bos: Optional[bool] = None):
        # lists are copied (the caller may change its own); other sequences (LazyExamples) are read
        self.examples = examples if isinstance(examples, Sequence) and not isinstance(examples, list) else list(examples)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.template = template
        self.bos = tokenizer.bos_token_id if (tokenizer_adds_bos(tokenizer) if add_bos is None else add_bos) else None
        self.eos = getattr(tokenizer, "eos_token_id", None)
        self._lock = threading.Lock()  # a fast tokenizer is not safe to call from several threads at once
        self._fast_lengths: Optional[bool] = None
        if len(self.examples) and self.max_length - (self.bos is not None) < 2:
            raise ValueError(f"max_length={self.max_length} is too small for a prompt and an answer")
        self.num_tokens, self.overlong = self._count()
        if self.overlong:
            log.warning("%s of %s rows are longer than data.max_length=%d tokens and are truncated (the prompt "
                        "from the left; raise data.max_length to keep them whole)",
                        f"{self.overlong:,}", f"{len(self.examples):,}", self.max_length)

    def _encode(self, examples: Sequence[Example]) -> tuple[list[list[int]], list[list[int]]]:
        prompts = [format_prompt(ex.prompt, self.template, self.tokenizer) for ex in examples]
        answers = [ex.answer for ex in examples]
        with self._lock:
            return (self.tokenizer(prompts, add_special_tokens=False)["input_ids"],
                    self.tokenizer(answers, add_special_tokens=False)["input_ids"])

    def _count(self) -> tuple[int, int]:
        """(tokens in all items after truncation, rows longer than max_length); keeps each item's token
        count after truncation in `self.lengths` (trainer.group_by_length batches by it)."""
        extra = (self.bos is not None) + (self.eos is not None)
        tokens = overlong = 0
        self.lengths = array("I")
        for s in range(0, len(self.examples), self.CHUNK):
            chunk = list(self.examples[s:s + self.CHUNK])
            prompts = self._lengths([format_prompt(ex.prompt, self.template, self.tokenizer) for ex in chunk])
            for p, a in zip(prompts, self._lengths([ex.answer for ex in chunk])):
                n = p + a + extra
                overlong += n > self.max_length
                tokens += min(n, self.max_length)
                self.lengths.append(min(n, self.max_length))
        return tokens, overlong

    def _lengths(self, texts: list[str]) -> list[int]:
        """Token counts of `texts`. The Rust backend's `encode_batch_fast` (no offsets) counts about
        2.5x faster than the tokenizer's own call; it is used once it agreed on a first batch."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if self._fast_lengths:
            return [len(enc) for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]
        with self._lock:
            own = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        if self._fast_lengths is None:
            fast = getattr(backend, "encode_batch_fast", None)
            self._fast_lengths = fast is not None and [len(e) for e in fast(texts, add_special_tokens=False)] == own
        return own

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        (prompt,), (answer,) = self._encode([self.examples[index]])
        input_ids, labels = encode_pair(prompt, answer, self.max_length, self.bos, self.eos)
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long)}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


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
