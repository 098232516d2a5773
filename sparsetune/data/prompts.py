"""Prompt templates shared by training (loss on the answer only) and evaluation (same formatting)."""

from __future__ import annotations

TEMPLATES = {
    # Alpaca-style, as the LLM-Adapters data used by the S2FT and PAT papers
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n"
    ),
    "plain": "{prompt}\n",
}


def format_prompt(prompt: str, template: str = "alpaca") -> str:
    if template not in TEMPLATES:
        from sparsetune.errors import ConfigError

        raise ConfigError(f"unknown prompt_template '{template}'; available: {', '.join(TEMPLATES)}")
    return TEMPLATES[template].format(prompt=prompt)
