"""split.py's rules on row numbers, for a file too large to hold as Examples (jsonl).

Each row is known by its task (an int) and a 64-bit digest of its prompt (`prompt_key`), so the
parts come out as arrays of row numbers — the same rows in the same order as `make_splits` with its
defaults gives for the Examples (tests/data/test_jsonl_streaming.py checks this): per task in order
of first appearance, the first row of each prompt kept, shuffled by the same seeded `random.Random`
(whose shuffle depends only on the length, so an int array is permuted as the list was), the first
`test_count` held out; the rest pooled, shuffled and stripped of held-out prompts; validation carved
from the pool's head unless given. Two different prompts sharing a digest would count as duplicates
(odds about 1e-7 for two million rows).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np

from sparsetune.data.sources.common import stable_rng
from sparsetune.data.sources.split import carve_val, test_count
from sparsetune.errors import DataError

NONE = np.empty(0, dtype=np.int64)


def prompt_key(prompt: str) -> bytes:
    """8 bytes that stand for the prompt (read as one little-endian uint64)."""
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()


def _shuffled(rows: np.ndarray, *seed_parts: object) -> np.ndarray:
    out = rows.copy()
    stable_rng(*seed_parts).shuffle(out)  # the permutation `stable_shuffle` gives a list of this length
    return out


def _without(rows: np.ndarray, key: np.ndarray, drop: np.ndarray) -> np.ndarray:
    return rows[~np.isin(key[rows], key[drop])] if len(drop) else rows


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else NONE


def _by_task(rows: np.ndarray, task: np.ndarray) -> list[np.ndarray]:
    """`rows` (ascending) grouped by task, tasks in order of first appearance, file order inside."""
    if not len(rows):
        return []
    ids = task[rows]
    order = np.argsort(ids, kind="stable")
    groups = np.split(rows[order], np.flatnonzero(np.diff(ids[order])) + 1)
    return sorted(groups, key=lambda g: g[0])


def _pool(groups: list[np.ndarray], key: np.ndarray, task_names: list[str], task: np.ndarray,
          seed: int, test_size: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, pooled rest): per task, duplicates dropped and shuffled; `test_size` None:
    nothing held out (the file gave its own test part)."""
    test, pool = [], []
    for rows in groups:
        _, first = np.unique(key[rows], return_index=True)
        name = task_names[int(task[rows[0]])]
        rows = _shuffled(rows[np.sort(first)], "split", seed, name)
        k = 0 if test_size is None else test_count(name, len(rows), test_size)
        test.append(rows[:k])
        pool.append(rows[k:])
    return _cat(test), _shuffled(_cat(pool), "pool", seed)


def split_rows(train_rows: np.ndarray, task: np.ndarray, key: np.ndarray, task_names: list[str], data_cfg: Any, *,
               test: Optional[np.ndarray] = None, val: Optional[np.ndarray] = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row numbers. `train_rows`: the rows to split (ascending); `task`/`key`: per
    row of the whole file set; `test`/`val`: the file's own parts (its `split` column), if any."""
    seed = int(data_cfg.split_seed)
    groups = _by_task(train_rows, task)
    if test is None:
        test, pool = _pool(groups, key, task_names, task, seed, data_cfg.test_size)
    else:
        _, pool = _pool(groups, key, task_names, task, seed, None)
    pool = _without(pool, key, test)
    if val is not None and len(val) > 0:
        val = _without(val, key, test)
    else:
        val, pool = carve_val(pool, data_cfg)
    train = _without(pool, key, val)
    if data_cfg.train_size is not None:
        train = train[: max(0, int(data_cfg.train_size))]
    if not len(train) and data_cfg.train_size != 0:
        raise DataError(f"data '{data_cfg.name}': no training examples left after the test/validation split")
    return train, val, test
