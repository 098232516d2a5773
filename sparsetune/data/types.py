"""Plain records shared by data loading, training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Example:
    """One prompt -> answer item. Multiple-choice items also carry `choices` and the gold `label`
    (then `answer == choices[label]`); generative items are scored by matching `answer`."""

    prompt: str
    answer: str
    task: str
    choices: Optional[list[str]] = None
    label: Optional[int] = None
    # benchmark items (source=benchmarks): the item's row in the shipped split, so evaluation scores
    # exactly these rows with lm-eval's own task
    row: Optional[int] = None


@dataclass
class Splits:
    """Train / validation / held-out test parts of a data set.

    Text: sequences of Example — lists, or `rows.LazyExamples` (jsonl files), which read a row from
    its file each time it is indexed. Vision: torch Datasets yielding {"pixel_values", "labels"}.
    Validation is for model selection; the test part is never used for it.
    """

    kind: str  # "text" | "vision"
    train: Any
    val: Any
    test: Any
    num_classes: Optional[int] = None
    class_names: list[str] = field(default_factory=list)
