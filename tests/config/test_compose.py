"""Recipes compose, and every kind of bad override is one clear ConfigError."""

from __future__ import annotations

import pytest

from sparsetune.config import list_recipes
from sparsetune.errors import ConfigError
from sparsetune.jobs.config import compose_job as compose


def test_default_and_recipe_compose():
    cfg = compose([])
    assert cfg.model.name == "smollm2_135m" and cfg.method.name == "full"
    cfg = compose(["recipe=lora_llama", "trainer.max_steps=3", "method.r=4"])
    assert cfg.recipe == "lora_llama" and cfg.method.name == "lora" and cfg.method.r == 4
    assert cfg.trainer.max_steps == 3


def test_schema_fields_not_in_yaml_can_be_set():
    cfg = compose(["trainer.epochs=1.5", "method=lora", "method.dropout=0.1"])
    assert cfg.trainer.epochs == 1.5 and cfg.method.dropout == 0.1


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("model.hidden_sise=1", r"unknown config key 'model.hidden_sise'; valid keys in model: .*name_or_path"),
        ("trainer.lr=fast", r"trainer.lr: .*'fast'.*Float"),
        ("model=nope", r"unknown model 'nope'; available: .*smollm2_135m.*tiny_llama"),
        ("+trainer.foo=1", r"unknown config key 'trainer.foo'"),
        ("recipe=nope", r"unknown recipe 'nope'; available: .*lora_llama"),
        ("+foo=1", r"unknown config key 'foo'"),
    ],
)
def test_bad_overrides(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        compose([override])


def test_method_schema_applies():
    with pytest.raises(ConfigError, match=r"unknown config key 'method.foo'; valid keys in method: .*\br\b"):
        compose(["method=lora", "method.foo=1"])
    with pytest.raises(ConfigError, match=r"method.r: .*Integer"):
        compose(["method=lora", "method.r=x"])


def test_every_recipe_composes_and_describes_itself():
    names = list_recipes()
    assert names and all(desc for _, desc in names)
    for name, _ in names:
        assert compose([f"recipe={name}"]).recipe == name


@pytest.mark.parametrize("overrides,message", [
    (["method=s2ft", "method.selection=bogus"], "method.selection"),
    (["method=pat", "method.prune_ratio=1.5"], "prune_ratio"),
    (["method=spt", "method.ffn_gate=bogus"], "ffn_gate"),
    (["method=evit", "method.keep_rate=0"], "keep_rate"),
    (["method=prune_lora", "method.importance=bogus"], "method.importance"),
])
def test_method_values_fail_at_compose_time(overrides, message):
    from sparsetune.jobs.config import compose_job

    with pytest.raises(ConfigError, match=message):
        compose_job(overrides)  # before any model, data or method object exists


def test_a_recipe_sets_top_level_keys_and_the_command_line_still_wins():
    """pat_llama2_7b trains with the reference's seed 42; `seed=3` on the command line overrides it."""
    assert compose(["recipe=pat_llama2_7b"]).seed == 42
    assert compose(["recipe=pat_llama2_7b", "seed=3"]).seed == 3
    assert compose(["recipe=lora_llama"]).seed == 0
