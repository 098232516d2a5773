"""GSM-Symbolic grade-school word problems from reasoning-gym (offline, unlimited, seeded).

reasoning-gym instantiates 100 GSM8K-derived templates with fresh names and numbers; item i of a
data set depends only on (seed, i). The first `test_size` distinct problems are the test set, so
changing `train_size` never changes it; later items fill validation and training. The answer is
the final number; the question already ends with "Give the result as your final answer.".
"""

from __future__ import annotations

from typing import Any

from sparsetune.data.sources.split import make_splits
from sparsetune.data.types import Example, Splits
from sparsetune.errors import DataError

TASK = "gsm_symbolic"
DEFAULT_TRAIN_SIZE = 2000


def generate(count: int, seed: int) -> list[Example]:
    """`count` distinct problems (a few more are drawn to replace the rare repeated question)."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("source=gsm_symbolic needs reasoning-gym: "
                        "pip install -c constraints.txt reasoning-gym") from None
    size = count + count // 10 + 20
    data = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    seen: set[str] = set()
    out: list[Example] = []
    for i in range(size):
        item = data[i]
        question = item["question"].strip()
        if question in seen:
            continue
        seen.add(question)
        out.append(Example(prompt=question, answer=str(item["answer"]).strip(), task=TASK))
        if len(out) == count:
            return out
    raise DataError(f"gsm_symbolic: could only generate {len(out)} distinct problems of {count}")


def load_gsm_symbolic(data_cfg: Any) -> Splits:
    train = DEFAULT_TRAIN_SIZE if data_cfg.train_size is None else int(data_cfg.train_size)
    count = int(data_cfg.test_size) + int(data_cfg.val_size or 0) + train
    examples = generate(count, int(data_cfg.split_seed))
    return make_splits({TASK: examples}, data_cfg, shuffle_tasks=False, cap_test=False)
