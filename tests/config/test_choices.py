"""Allowed values live with the schema (`one_of`): one generic check refuses anything else, for the
shared groups and every method, when the config is composed and when a method is built in code."""

from __future__ import annotations

import dataclasses

import pytest

from sparsetune.config.schema import Config, MethodConfig, check_choices, choices_of, one_of
from sparsetune.errors import ConfigError
from sparsetune.jobs.config import compose_job, method_schema
from sparsetune.methods import REGISTRY


def _schemas() -> list[type]:
    groups = [type(f.default_factory()) for f in dataclasses.fields(Config)
              if f.default_factory is not dataclasses.MISSING]
    return [*groups, MethodConfig, *(method_schema(name) for name in REGISTRY)]


@pytest.mark.parametrize("schema", _schemas(), ids=lambda s: s.__name__)
def test_every_one_of_default_is_one_of_its_choices(schema):
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(schema)}
    for name, allowed in choices_of(schema).items():
        values = defaults[name] if isinstance(defaults[name], list) else [defaults[name]]
        assert values and all(v in allowed for v in values), (schema.__name__, name, defaults[name], allowed)
    check_choices(schema, schema(), "x")  # and the check itself accepts the defaults


def test_the_enums_are_data_on_the_schemas():
    found = {(s.__name__, name) for s in _schemas() for name in choices_of(s)}
    assert {("TrainerConfig", "schedule"), ("ModelConfig", "task"), ("DataConfig", "prompt_template"),
            ("EvalConfig", "scoring"), ("LoggerConfig", "wandb_mode"), ("S2FTConfig", "selection"),
            ("S2FTConfig", "allocation"), ("PATConfig", "hsm"), ("PATConfig", "base"),
            ("PATConfig", "identity_terms"), ("PATConfig", "freeze_selection"), ("GSLoRAConfig", "groups"),
            ("GSLoRAConfig", "proto_on"), ("RetrainConfig", "train")} <= found


def test_a_subclass_that_changes_a_default_keeps_the_choices():
    from sparsetune.methods.gslora.config import GSLoRAConfig, RetrainConfig

    assert choices_of(RetrainConfig)["train"] == choices_of(GSLoRAConfig)["train"] == ("lora", "full", "retrain")


def test_choices_agree_with_what_the_code_dispatches_on():
    from sparsetune.methods.gslora.config import GSLoRAConfig
    from sparsetune.methods.gslora.groups import GROUPINGS
    from sparsetune.methods.gslora.losses import FORGET_LOSSES
    from sparsetune.methods.gslora.prototypes import SOURCES
    from sparsetune.methods.pat.config import PATConfig, PruneLoRAConfig
    from sparsetune.methods.pat.importance import KINDS

    gs = choices_of(GSLoRAConfig)
    assert set(gs["forget_loss"]) == set(FORGET_LOSSES) and gs["groups"] == GROUPINGS and gs["proto_on"] == SOURCES
    assert choices_of(PATConfig)["freeze_selection"] == choices_of(PruneLoRAConfig)["importance"] == KINDS


@pytest.mark.parametrize("overrides,message", [
    (["method=s2ft", "method.selection=bogus"],
     "method.selection: 'bogus' is not valid; valid: random, weight, activation, gradient"),
    (["method=gslora", "method.groups=rows"], "method.groups: 'rows' is not valid; valid: block, module, matrix"),
    (["method=gslora_retrain", "method.proto_on=pixels"],
     "method.proto_on: 'pixels' is not valid; valid: logits, embeddings"),
    (["method=pat", "method.align_heads=maybe"], "method.align_heads: 'maybe' is not valid; valid: auto, true, false"),
    (["method=spt", "method.target_modules=[q,lm_head]"],
     "method.target_modules: 'lm_head' is not valid; valid: q, k, v, o, gate, up, down"),
    (["method=prune_lora", "method.base=frozen"], "method.base: 'frozen' is not valid; valid: lora, dora, full"),
    (["data.prompt_template=fancy"], "data.prompt_template: 'fancy' is not valid; valid: alpaca, plain, none, chat"),
    (["eval.scoring=vote"], "eval.scoring: 'vote' is not valid; valid: auto, multiple_choice, generate"),
])
def test_a_value_outside_the_choices_fails_at_compose_time(overrides, message):
    with pytest.raises(ConfigError) as info:
        compose_job(overrides)  # before any model, data or method object exists
    assert str(info.value) == message


def test_a_method_built_in_code_gets_the_same_check():
    from sparsetune.methods.gslora.config import GSLoRAConfig
    from sparsetune.methods.gslora.method import GSLoRA
    from sparsetune.methods.s2ft import S2FT, S2FTConfig

    with pytest.raises(ConfigError, match=r"^method.groups: 'rows' is not valid; valid: block, module, matrix$"):
        GSLoRA(GSLoRAConfig(groups="rows"))
    with pytest.raises(ConfigError, match=r"^method.allocation: 'uniform' is not valid"):
        S2FT(S2FTConfig(allocation="uniform"))


def test_one_of_on_a_list_checks_every_item():
    @dataclasses.dataclass
    class Toy:
        kinds: list[str] = one_of(["a"], "a", "b")
        mode: str = one_of("x", "x", "y")

    assert Toy().kinds == ["a"] and Toy().kinds is not Toy().kinds  # a fresh list per instance
    check_choices(Toy, {"kinds": ["b", "a"], "mode": "y"}, "toy")
    with pytest.raises(ConfigError, match=r"^toy.kinds: 'c' is not valid; valid: a, b$"):
        check_choices(Toy, {"kinds": ["a", "c"]}, "toy")
