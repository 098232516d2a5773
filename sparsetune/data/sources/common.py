"""Small helpers shared by the text sources: the multiple-choice prompt layout and stable shuffles."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def stable_rng(*parts: object) -> random.Random:
    """A Random seeded from `parts` the same way in every process (str seeds are hashed with sha512,
    not with Python's per-process salted hash)."""
    return random.Random(":".join(str(p) for p in parts))


def stable_shuffle(items: Sequence[T], *seed_parts: object) -> list[T]:
    out = list(items)
    stable_rng(*seed_parts).shuffle(out)
    return out


def text_seed(text: str) -> str:
    """A short digest of `text`, for per-example shuffles that do not depend on file order."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def mc_prompt(question: str, choices: Sequence[str], header: str = "", footer: str = "") -> str:
    """A self-contained multiple-choice prompt: the question, then every option on its own line.

    Training and evaluation both see this text, so a model can answer by copying one option and
    log-likelihood scoring compares exactly the strings listed here.
    """
    lines = [header.strip()] if header.strip() else []
    lines.append(question.strip())
    lines.append("Options:")
    lines.extend(f"- {c.strip()}" for c in choices)
    if footer.strip():
        lines.append(footer.strip())
    return "\n".join(lines)
