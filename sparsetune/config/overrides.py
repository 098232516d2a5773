"""Override values as the user typed them, made safe for Hydra's grammar.

Hydra reads an unquoted value with a small alphabet: a path with a non-ASCII letter, `=`, `,`, `~` or
a quote fails with a lexer error that says nothing about quoting. So a path-valued key (its name is
`path` or `dir`, or ends in `_path`, `_dir`, `_run`; also `run` and `resume`) gets its value quoted
before Hydra parses it, unless it is quoted already (or null, or a list); and the values sparsetune
reads itself (`run=`, `resume=`, a `recipe=FILE.yaml`) lose one pair of quotes. A path then works
with or without quotes; an unquoted leading `~` is the home folder. Any other value Hydra cannot read gets an error that shows how to quote it.
"""

from __future__ import annotations

import os
import re

PATH_KEY = re.compile(r"(^|[._])(path|dir|run)$|^resume$")
QUOTES = ("'", '"')


def is_path_key(key: str) -> bool:
    """model.name_or_path, data.path, eval.include_path, sweep.dir, run_dir, method.baseline_run, run, resume."""
    return bool(PATH_KEY.search(key.lstrip("+~")))


def is_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in QUOTES


def unquote(value: str) -> str:
    """`'/runs/my run'` or `"/runs/my run"` -> `/runs/my run` (an escaped quote inside unescaped, as
    Hydra reads it); an unquoted value as it is."""
    if not is_quoted(value):
        return value
    quote = value[0]
    return re.sub(r"(\\*)\\" + quote, lambda m: m.group(1)[: len(m.group(1)) // 2] + quote, value[1:-1])


def hydra_quote(value: str) -> str:
    """A single-quoted Hydra string whose value is `value` exactly: a quote is escaped, and so is a run of
    backslashes just before a quote or at the end (Hydra's rule; other backslashes are literal)."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def quote_path(override: str) -> str:
    """`data.path=/data/é x.jsonl` -> `data.path='/data/é x.jsonl'`; other overrides as they are."""
    if "=" not in override:
        return override
    key, value = override.split("=", 1)
    if key.startswith(("~", "hydra")) or not is_path_key(key) or value in ("", "null", "~"):
        return override
    if is_quoted(value) or value[:1] in ("[", "{"):
        return override
    return f"{key}={hydra_quote(os.path.expanduser(value))}"  # `~/runs`: the home folder, as a shell means it


def grammar_hint(overrides: list[str]) -> str | None:
    """For the first override Hydra's grammar cannot read: the key, the value, and how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException:
            key, _, value = override.partition("=")
            if not value or value[:1] in ("[", "{"):  # a list or dict typed wrong: Hydra's own words
                return None
            key = key.lstrip("+")
            return (f"{key}: Hydra's override grammar cannot read {value!r} unquoted (letters outside ASCII, "
                    f"'=', ',', '~', quotes and brackets need quotes); quote the value: {key}={hydra_quote(value)} "
                    f"(in a shell: \"{key}={hydra_quote(value)}\")")
    return None
