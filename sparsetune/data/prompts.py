"""Prompt templates shared by training (loss on the answer only) and evaluation (same formatting).

`chat` renders the prompt as one user turn with the tokenizer's own chat template (and the
assistant header after it), so instruct models are fine-tuned and scored in the format they know.
"""

from __future__ import annotations

from typing import Any, Optional

from sparsetune.errors import ConfigError

TEMPLATES = {
    # Alpaca-style, as the LLM-Adapters data used by the S2FT and PAT papers
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{prompt}\n\n### Response:\n"
    ),
    "plain": "{prompt}\n",
    # the prompt is already formatted (source=benchmarks: lm-eval's own context for the item)
    "none": "{prompt}",
}
CHAT = "chat"  # the tokenizer's chat template (needs the tokenizer)
TEMPLATE_NAMES = (*TEMPLATES, CHAT)


def format_prompt(prompt: str, template: str = "alpaca", tokenizer: Optional[Any] = None) -> str:
    if template == CHAT:
        if tokenizer is None:
            raise ConfigError("data.prompt_template=chat needs the tokenizer to format prompts")
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ConfigError(f"data.prompt_template=chat: tokenizer '{name}' has no chat template; "
                              "use data.prompt_template=alpaca or plain")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        # a template that writes BOS itself (Llama-3) would double it: BOS is added at tokenisation
        # exactly when the tokenizer adds it by default (see data.text.tokenizer_adds_bos)
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            text = text[len(bos):]
        return text
    if template not in TEMPLATES:
        raise ConfigError(f"unknown prompt_template '{template}'; available: {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[template].format(prompt=prompt)
