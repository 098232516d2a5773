"""One set of LoRA key names (PEFT's: r, alpha, dropout, target_modules). A run folder whose stored
config.yaml an older version wrote (method.lora_r, gslora's method.targets, ...) still loads with its
values carried over; an old key the user gives fails with one line naming the new one."""

from __future__ import annotations

import pytest
import yaml

from sparsetune.config.schema import EARLIER_DEFAULTS, RENAMED_METHOD_KEYS
from sparsetune.engine.run_folder import RunFolder
from sparsetune.errors import ConfigError
from sparsetune.jobs.config import compose_job, load_run_config


def _stored_with_old_keys(tmp_path, overrides: list[str], old: dict[str, str]) -> RunFolder:
    """A run folder whose config.yaml spells the method keys in `old` ({new: old}) as before."""
    cfg = compose_job([*overrides, f"run_dir={tmp_path}"])
    run = RunFolder.create(cfg, overrides, "train")
    stored = yaml.safe_load(run.config_path.read_text())
    stored["method"] = {old.get(k, k): v for k, v in stored["method"].items()}
    run.config_path.write_text(yaml.safe_dump(stored, sort_keys=False))
    return run


@pytest.mark.parametrize("method,values,old", [
    ("pat", {"r": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": ["q", "v"]},
     {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "lora_targets"}),
    ("prune_lora", {"r": 6, "alpha": 2.0, "target_modules": ["up"]},
     {"r": "lora_r", "alpha": "lora_alpha", "target_modules": "lora_targets"}),
    ("spt", {"r": 2, "alpha": 4.0, "target_modules": ["k", "o"]},
     {"r": "lora_r", "alpha": "lora_alpha", "target_modules": "lora_targets"}),
    ("gslora_pp", {"r": 3, "target_modules": ["q", "down"]}, {"target_modules": "targets"}),
])
def test_a_stored_config_with_the_old_keys_loads_with_its_values(tmp_path, method, values, old):
    given = [f"method={method}", *(f"method.{k}=[{','.join(v)}]" if isinstance(v, list) else f"method.{k}={v}"
                                   for k, v in values.items())]
    run = _stored_with_old_keys(tmp_path, given, old)
    text = run.config_path.read_text()
    assert all(f"  {o}:" in text for o in old.values())  # really the old spelling on disk
    cfg = load_run_config(run)
    got = {k: (list(cfg.method[k]) if isinstance(v, list) else cfg.method[k]) for k, v in values.items()}
    assert got == values and cfg.method.name == method
    assert not set(old.values()) & set(cfg.method)


def test_resume_of_an_old_run_carries_the_keys_over(tmp_path):
    from sparsetune.jobs.resume import resume_config

    run = _stored_with_old_keys(tmp_path, ["method=pat", "method.r=4"], {"r": "lora_r"})
    cfg = resume_config(str(run.path), [f"resume={run.path}", "trainer.max_steps=7"])
    assert cfg.method.r == 4 and cfg.trainer.max_steps == 7 and "lora_r" not in cfg.method


@pytest.mark.parametrize("overrides,old,new", [
    (["method=pat", "method.lora_r=8"], "lora_r", "r"),
    (["recipe=pat_llama", "method.lora_targets=[q]"], "lora_targets", "target_modules"),
    (["method=prune_lora", "method.lora_alpha=2"], "lora_alpha", "alpha"),
    (["method=spt", "method.lora_r=8"], "lora_r", "r"),
    (["method=gslora", "method.targets=[up]"], "targets", "target_modules"),
])
def test_an_old_key_from_the_user_names_the_new_one(overrides, old, new):
    with pytest.raises(ConfigError) as info:
        compose_job(overrides)
    msg = str(info.value)
    assert msg.startswith(f"method.{old} was renamed to method.{new}") and "\n" not in msg


def test_an_old_key_in_a_user_recipe_file_names_the_new_one(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("defaults:\n  - override /method: pat\nmethod:\n  lora_r: 8\n")
    with pytest.raises(ConfigError, match=r"^method.lora_r was renamed to method.r"):
        compose_job([f"recipe={recipe}"])


def test_every_renamed_key_has_a_method_that_knows_the_new_name():
    from sparsetune.jobs.config import method_schema
    from sparsetune.methods import REGISTRY

    fields = {f for name in REGISTRY for f in method_schema(name).__dataclass_fields__}
    assert set(RENAMED_METHOD_KEYS.values()) <= fields and not set(RENAMED_METHOD_KEYS) & fields


def test_a_stored_config_without_a_key_whose_default_changed_keeps_the_earlier_value(tmp_path):
    """SPT's key selection became `block` by default (issue #24): a run stored before the key existed
    trained with per-key selection, so it loads with `per_key`, not today's default; a stored config
    that names the key keeps its own value."""
    assert ("spt", "attention_selection") in EARLIER_DEFAULTS
    assert compose_job(["method=spt"]).method.attention_selection == "block"
    run = _stored_with_old_keys(tmp_path / "old", ["method=spt"], {})
    stored = yaml.safe_load(run.config_path.read_text())
    del stored["method"]["attention_selection"]
    run.config_path.write_text(yaml.safe_dump(stored, sort_keys=False))
    assert load_run_config(run).method.attention_selection == "per_key"
    named = _stored_with_old_keys(tmp_path / "new", ["method=spt"], {})
    assert load_run_config(named).method.attention_selection == "block"
