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
from collections.abc import Callable
from typing import Any, Optional

from sparsetune.data.sources.common import stable_shuffle
from sparsetune.data.types import Example, Splits
from sparsetune.errors import DataError

log = logging.getLogger(__name__)


def _prompt(ex: Example) -> str:
    return ex.prompt


def dedupe(examples: list[Example], key: Callable[[Example], str] = _prompt) -> list[Example]:
    """Keep the first example of each key (a repeated prompt would leak across splits)."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        k = key(ex)
        if k not in seen:
            seen.add(k)
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


def carve_val(pool, data_cfg: Any):
    """(val, rest): the first `data.val_size` items of the shuffled pool (a list or an array of rows);
    a size that leaves nothing to train on is one line."""
    n_val = max(0, int(data_cfg.val_size or 0))
    if n_val >= len(pool):
        raise DataError(f"data '{data_cfg.name}': val_size={n_val} leaves no training examples "
                        f"({len(pool)} available after the test split)")
    return pool[:n_val], pool[n_val:]


def hold_out(by_task: dict[str, list[Example]], data_cfg: Any, *, shuffle_tasks: bool = True,
             cap_test: bool = True, key: Callable[[Example], str] = _prompt) -> tuple[list[Example], list[Example]]:
    """(held-out part, the rest pooled and shuffled): per task, deduplicated on `key`, then
    `test_size` held out; nothing in the rest has a key that is held out in any task."""
    seed = int(data_cfg.split_seed)
    test_out: list[Example] = []
    pool: list[Example] = []
    for task, examples in by_task.items():
        examples = dedupe(examples, key)
        if shuffle_tasks:
            examples = stable_shuffle(examples, "split", seed, task)
        k = test_count(task, len(examples), data_cfg.test_size, cap_test)
        test_out.extend(examples[:k])
        pool.extend(examples[k:])
    held = {key(ex) for ex in test_out}
    return test_out, [ex for ex in stable_shuffle(pool, "pool", seed) if key(ex) not in held]


def make_splits(
    by_task: dict[str, list[Example]],
    data_cfg: Any,
    *,
    shuffle_tasks: bool = True,
    cap_test: bool = True,
    test: Optional[list[Example]] = None,
    val: Optional[list[Example]] = None,
    key: Callable[[Example], str] = _prompt,
) -> Splits:
    """Split examples grouped by task into a text `Splits`.

    shuffle_tasks=False keeps each task's order and cap_test=False holds out the full `test_size`
    (generators: their first items stay the test set whatever the training size). `test`/`val` given:
    use them instead of carving those parts. `key` decides which items count as the same (default:
    the exact prompt).
    """
    seed = int(data_cfg.split_seed)
    if test is None:
        test_out, pool = hold_out(by_task, data_cfg, shuffle_tasks=shuffle_tasks, cap_test=cap_test, key=key)
    else:
        test_out = list(test)
        held = {key(ex) for ex in test_out}
        pool = []
        for task, examples in by_task.items():
            examples = dedupe(examples, key)
            pool.extend(stable_shuffle(examples, "split", seed, task) if shuffle_tasks else examples)
        pool = [ex for ex in stable_shuffle(pool, "pool", seed) if key(ex) not in held]
    held_out = {key(ex) for ex in test_out}
    if val is not None and len(val) > 0:
        val_out = [ex for ex in val if key(ex) not in held_out]
    else:
        val_out, pool = carve_val(pool, data_cfg)
    val_keys = {key(ex) for ex in val_out}
    train = [ex for ex in pool if key(ex) not in val_keys]
    if data_cfg.train_size is not None:
        train = train[: max(0, int(data_cfg.train_size))]
    if not train and data_cfg.train_size != 0:
        raise DataError(f"data '{data_cfg.name}': no training examples left after the test/validation split")
    return Splits(kind="text", train=train, val=val_out, test=test_out)
