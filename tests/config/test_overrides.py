"""Path-valued overrides quoted for Hydra, quotes taken off the values sparsetune reads itself
(sparsetune/config/overrides.py; end to end: tests/test_bad_input.py, PATHS)."""

from __future__ import annotations

import os

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from sparsetune.config.overrides import hydra_quote, is_path_key, quote_path, unquote

ODD = ["/data/é dir/a=b.jsonl", "it's", "C:\\dir\\", "a\\'b", "${oc.env:HOME}/x", "a,b", "[x]", "日本/データ"]


@pytest.mark.parametrize("value", ODD)
def test_hydra_reads_back_exactly_the_value_we_quoted(value):
    assert OverridesParser.create().parse_override(f"k={hydra_quote(value)}").value() == value


@pytest.mark.parametrize("key,expected", [
    ("data.path", True), ("model.name_or_path", True), ("eval.include_path", True), ("sweep.dir", True),
    ("run_dir", True), ("method.baseline_run", True), ("run", True), ("resume", True), ("++data.path", True),
    ("data.paths", False), ("trainer.lr", False), ("logger.group", False), ("data.prompt_field", False),
])
def test_path_keys_by_name(key, expected):
    assert is_path_key(key) is expected


def test_quote_path_leaves_what_is_not_a_bare_path():
    assert quote_path("data.path=/a é") == "data.path='/a é'"
    assert quote_path("++data.path=/a") == "++data.path='/a'"
    assert quote_path("run_dir=~/runs") == f"run_dir='{os.path.expanduser('~/runs')}'"
    for kept in ("data.path=null", "data.path='/x y'", 'data.path="/x y"', "data.path=", "trainer.lr=1e-3",
                 "logger.group=g", "~data.path", "data=jsonl"):
        assert quote_path(kept) == kept


def test_unquote():
    assert unquote("'/runs/my run'") == unquote('"/runs/my run"') == "/runs/my run"
    assert unquote("'it\\'s'") == "it's"
    assert unquote("/plain") == "/plain" and unquote("'half") == "'half"
