"""Deterministic arithmetic QA needing no package or file: tests and quick runs.

Tasks: `arith` ("What is 17 + 25?" -> "42", generative) and `arith_mc` (the same kind of question
with four listed options, multiple choice). One seeded stream of distinct questions is dealt to the
tasks in turn, so no question appears in two tasks or two splits; the first `test_size` questions
of each task are its test set whatever the training size.
"""

from __future__ import annotations

from typing import Any

from sparsetune.data.sources.common import mc_prompt, stable_rng
from sparsetune.data.sources.split import make_splits
from sparsetune.data.types import Example, Splits
from sparsetune.errors import ConfigError

TASKS = ("arith", "arith_mc")
DEFAULT_TRAIN_SIZE = 512


def _question(rng) -> tuple[str, int]:
    op = rng.choice("+-*")
    if op == "+":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"What is {a} + {b}?", a + b
    if op == "-":
        a = rng.randint(0, 99)
        b = rng.randint(0, a)
        return f"What is {a} - {b}?", a - b
    a, b = rng.randint(2, 19), rng.randint(2, 9)
    return f"What is {a} * {b}?", a * b


def _mc_example(question: str, result: int, rng) -> Example:
    offsets = rng.sample([-10, -2, -1, 1, 2, 10], 6)
    wrong = [result + d for d in offsets if result + d >= 0][:3]
    choices = [str(v) for v in [result, *wrong]]
    rng.shuffle(choices)
    label = choices.index(str(result))
    return Example(prompt=mc_prompt(question, choices), answer=choices[label], task="arith_mc",
                   choices=choices, label=label)


def generate(tasks: list[str], per_task: int, seed: int) -> dict[str, list[Example]]:
    """`per_task` examples for each task, dealt round-robin from one stream of distinct questions."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown synthetic task '{unknown[0]}'; available: {', '.join(TASKS)}")
    rng = stable_rng("synthetic", seed)
    out: dict[str, list[Example]] = {t: [] for t in tasks}
    seen: set[str] = set()
    turn = draws = 0
    while any(len(v) < per_task for v in out.values()):
        draws += 1
        if draws > 200_000:
            raise ConfigError(f"synthetic: cannot draw {per_task} distinct questions per task; lower the sizes")
        question, result = _question(rng)
        if question in seen:
            continue
        seen.add(question)
        task = tasks[turn % len(tasks)]
        turn += 1
        if task == "arith":
            out[task].append(Example(prompt=question, answer=str(result), task=task))
        else:
            out[task].append(_mc_example(question, result, rng))
    return out


def load_synthetic(data_cfg: Any) -> Splits:
    tasks = list(data_cfg.tasks or TASKS)
    train = DEFAULT_TRAIN_SIZE if data_cfg.train_size is None else int(data_cfg.train_size)
    rest = int(data_cfg.val_size or 0) + train
    per_task = int(data_cfg.test_size) + -(-rest // len(tasks))
    by_task = generate(tasks, per_task, int(data_cfg.split_seed))
    return make_splits(by_task, data_cfg, shuffle_tasks=False, cap_test=False)
