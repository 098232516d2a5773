"""One validation pass over the resolved config: every bad value is one ConfigError line naming its key;
the runs root is checked before any run folder exists."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from sparsetune.config.checks import check_environment, forbid_stored_trust_remote_code
from sparsetune.config.schema import SCHEDULES
from sparsetune.errors import ConfigError
from sparsetune.jobs.config import compose_job

BAD = [
    # (overrides, key the message must name)
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.batch_size=-3"], "trainer.batch_size"),
    (["trainer.grad_accum=0"], "trainer.grad_accum"),
    (["trainer.lr=0"], "trainer.lr"),
    (["trainer.lr=-1e-4"], "trainer.lr"),
    (["trainer.lr=nan"], "trainer.lr"),
    (["trainer.lr=inf"], "trainer.lr"),
    (["trainer.lr=${oc.env:HOME}"], "trainer.lr"),
    (["trainer.lr=${nope.missing}"], "trainer.lr"),
    (["trainer.warmup_steps=${oc.env:SPARSETUNE_SURELY_UNSET_VAR}"], "trainer.warmup_steps"),
    (["trainer.weight_decay=-0.1"], "trainer.weight_decay"),
    (["trainer.weight_decay=inf"], "trainer.weight_decay"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.epochs=-1.5"], "trainer.epochs"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps"),
    (["trainer.schedule=warp"], "trainer.schedule"),
    (["trainer.precision=fp8"], "trainer.precision"),
    (["trainer.max_grad_norm=0"], "trainer.max_grad_norm"),
    (["trainer.max_grad_norm=-1"], "trainer.max_grad_norm"),
    (["trainer.device=tpu"], "trainer.device"),
    (["trainer.device=cuda:x"], "trainer.device"),
    (["trainer.threads=0"], "trainer.threads"),
    (["trainer.eval_every=-1"], "trainer.eval_every"),
    (["trainer.save_every=-5"], "trainer.save_every"),
    (["trainer.log_every=-1"], "trainer.log_every"),
    (["trainer.betas=[0.9]"], "trainer.betas"),
    (["seed=-1"], "seed"),
    (["seed=4294967296"], "seed"),
    (["data.max_length=0"], "data.max_length"),
    (["data.test_size=-1"], "data.test_size"),
    (["data.val_size=-1"], "data.val_size"),
    (["data.train_size=0"], "data.train_size"),
    (["data.kind=audio"], "data.kind"),
    (["data.tasks.x=1"], "data.tasks"),
    (["trainer.betas.foo=1"], "trainer.betas"),
    (["method=lora", "method.target_modules.a=1"], "method.target_modules"),
    (["eval.limit=0"], "eval.limit"),
    (["eval.batch_size=0"], "eval.batch_size"),
    (["logger.backends=[jsonl,foo]"], "logger.backends"),
    (["logger.wandb_mode=sometimes"], "logger.wandb_mode"),
    (["model.dtype=int8"], "model.dtype"),
    (["model.task=translation"], "model.task"),
    (["model.source=ftp"], "model.source"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        compose_job(overrides)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    assert msg.startswith(key), msg
    assert ";" in msg or "valid" in msg, msg  # says what is valid


GOOD = [
    [],
    ["trainer.epochs=1.5", "trainer.max_steps=0"],
    ["trainer.max_grad_norm=null"],
    ["trainer.device=cuda:1"],
    ["trainer.device=cpu", "trainer.threads=2"],
    ["trainer.precision=bf16"],
    ["trainer.precision=fp16"],
    ["seed=4294967295"],
    ["seed=0", "trainer.warmup_steps=0", "trainer.eval_every=0", "trainer.save_every=0"],
    ["data.train_size=null", "data.test_size=0", "data.val_size=0"],
    ["eval.limit=null"],
    ["eval.limit=5"],
    ["logger.backends=[jsonl]", "logger.wandb_mode=disabled"],
    ["model.dtype=bfloat16"],
    ["model.dtype=bf16"],
    ["trainer.lr=${trainer.max_grad_norm}"],
    ["data.tasks=[strategyqa]"],
    ["recipe=gslora_vit"],
    ["recipe=vit_fmnist"],
]


@pytest.mark.parametrize("overrides", GOOD, ids=[" ".join(o) or "defaults" for o in GOOD])
def test_good_values_pass(overrides):
    compose_job(overrides)


def test_every_schedule_name_is_accepted():
    for name in SCHEDULES:
        assert compose_job([f"trainer.schedule={name}"]).trainer.schedule == name


def test_interpolations_are_resolved_in_place():
    cfg = compose_job(["trainer.lr=${trainer.max_grad_norm}", "trainer.max_grad_norm=0.5"])
    assert cfg.trainer.lr == 0.5
    assert "${" not in OmegaConf.to_yaml(cfg)


def test_every_recipe_passes_the_checks():
    from sparsetune.config.compose import options

    for recipe in options("recipe"):
        compose_job([f"recipe={recipe}"])


# ------------------------------------------------------------------------------------ trust
def test_stored_config_never_switches_on_trust_remote_code():
    stored = OmegaConf.create({"model": {"trust_remote_code": True}})
    assert forbid_stored_trust_remote_code(stored).model.trust_remote_code is False
    stored = OmegaConf.create({"model": {"trust_remote_code": True}})
    assert forbid_stored_trust_remote_code(stored, ["model.trust_remote_code=true"]).model.trust_remote_code is True
    stored = {"model": {"trust_remote_code": True}}
    assert forbid_stored_trust_remote_code(stored, ["trainer.lr=1"])["model"]["trust_remote_code"] is False


def test_load_run_config_forces_trust_remote_code_off(tmp_path):
    from sparsetune.engine.run_folder import RunFolder
    from sparsetune.jobs.config import load_run_config

    cfg = compose_job(["model.trust_remote_code=true", f"run_dir={tmp_path}"])
    assert cfg.model.trust_remote_code is True  # from the command line: allowed
    run = RunFolder.create(cfg, ["model.trust_remote_code=true"], "train")
    assert "trust_remote_code: true" in run.config_path.read_text()
    assert load_run_config(run).model.trust_remote_code is False
    assert load_run_config(run, ["model.trust_remote_code=true"]).model.trust_remote_code is True


# ------------------------------------------------------------------------------------ environment
def test_environment_ok_and_creatable(tmp_path):
    assert check_environment(tmp_path) == tmp_path.resolve()
    assert check_environment(tmp_path / "new" / "deeper") == (tmp_path / "new" / "deeper").resolve()
    assert not (tmp_path / "new").exists()  # nothing created


def test_environment_not_a_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for root in (blocker, blocker / "runs"):
        with pytest.raises(ConfigError, match=r"^run_dir: .*not a directory") as info:
            check_environment(root)
        assert "\n" not in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod")
def test_environment_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"^run_dir: .*not writable"):
            check_environment(ro)
        with pytest.raises(ConfigError, match=r"^run_dir: .*cannot be created"):
            check_environment(ro / "runs")
    finally:
        ro.chmod(0o700)


def test_environment_free_space_floor(tmp_path):
    with pytest.raises(ConfigError, match=r"^run_dir: .* MB free; at least .* MB") as info:
        check_environment(tmp_path, min_free_bytes=2**62)
    assert "\n" not in str(info.value)


def test_setup_checks_the_runs_root_before_loading_anything(tmp_path, monkeypatch):
    """A bad runs root fails in `setup` before data or model are loaded and before any folder exists."""
    import sparsetune.jobs.assemble as assemble  # patched where setup looks it up (and imported first:
    # a module imported under the patch would keep the stub for every later test)

    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = compose_job(["model=tiny_llama", "data=synthetic_arith", f"run_dir={blocker / 'runs'}"])

    def boom(*a, **k):
        raise AssertionError("data loaded before the environment check")

    monkeypatch.setattr(assemble, "load_splits", boom)
    with pytest.raises(ConfigError, match=r"^run_dir: .*not a directory"):
        assemble.setup(cfg, [], "train")
