"""Train / validation / test splitting shared by every text source.

Rules (deterministic in `split_seed`):
- per task, duplicates (same prompt) are dropped, then `test_size` examples are held out (at most half
  of a small task, with a warning); a source may instead pass its own test part (a jsonl `split` column);
- the rest of all tasks is pooled and shuffled; `val_size` examples become validation, `train_size`
  caps what is left for training;
- anything whose prompt is in the test part is removed from train and validation, so the parts never
  overlap even when a file repeats a question.
Holding out the test part before `train_size`/`val_size` are applied keeps the test set the same when
only the training budget changes.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from sparsetune.data.sources.common import stable_shuffle
from sparsetune.data.types import Example, Splits
from sparsetune.errors import DataError

log = logging.getLogger(__name__)


def dedupe(examples: list[Example]) -> list[Example]:
    """Keep the first example of each prompt (a repeated prompt would leak across splits)."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    return out


def test_count(task: str, available: int, test_size: int, cap: bool = True) -> int:
    """How many of a task's examples to hold out: `test_size`, but (cap) never more than half."""
    wanted = max(0, int(test_size))
    if not cap:
        return min(wanted, available)
    if wanted > available // 2:
        log.warning("task %s has %d examples: holding out %d for test instead of %d",
                    task, available, available // 2, wanted)
        return available // 2
    return wanted


def make_splits(
    by_task: dict[str, list[Example]],
    data_cfg: Any,
    *,
    shuffle_tasks: bool = True,
    cap_test: bool = True,
    test: Optional[list[Example]] = None,
    val: Optional[list[Example]] = None,
) -> Splits:
    """Split examples grouped by task into a text `Splits`.

    shuffle_tasks=False keeps each task's order and cap_test=False holds out the full `test_size`
    (generators: their first items stay the test set whatever the training size). `test`/`val` given: use them instead of carving those parts.
    """
    seed = int(data_cfg.split_seed)
    test_out: list[Example] = list(test) if test is not None else []
    pool: list[Example] = []
    for task, examples in by_task.items():
        examples = dedupe(examples)
        if shuffle_tasks:
            examples = stable_shuffle(examples, "split", seed, task)
        if test is None:
            k = test_count(task, len(examples), data_cfg.test_size, cap_test)
            test_out.extend(examples[:k])
            examples = examples[k:]
        pool.extend(examples)

    held_out = {ex.prompt for ex in test_out}
    pool = [ex for ex in stable_shuffle(pool, "pool", seed) if ex.prompt not in held_out]
    if val is not None and len(val) > 0:
        val_out = [ex for ex in val if ex.prompt not in held_out]
    else:
        n_val = max(0, int(data_cfg.val_size or 0))
        if n_val >= len(pool):
            raise DataError(f"data '{data_cfg.name}': val_size={n_val} leaves no training examples "
                            f"({len(pool)} available after the test split)")
        val_out, pool = pool[:n_val], pool[n_val:]
    val_prompts = {ex.prompt for ex in val_out}
    train = [ex for ex in pool if ex.prompt not in val_prompts]
    if data_cfg.train_size is not None:
        train = train[: max(0, int(data_cfg.train_size))]
    if not train and data_cfg.train_size != 0:
        raise DataError(f"data '{data_cfg.name}': no training examples left after the test/validation split")
    return Splits(kind="text", train=train, val=val_out, test=test_out)
