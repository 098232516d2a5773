"""The front door: --version, completion, --cfg job, the user's own recipe files and config dirs,
forget's class names, and tables that never cut numbers."""

from __future__ import annotations

import io
import re
from importlib.metadata import version

import pytest
import yaml
from rich.console import Console

from sparsetune.cli import main
from sparsetune.data.forgetting import class_id, resolve_classes
from sparsetune.data.vision_sources import FASHION_MNIST_CLASSES, class_names
from sparsetune.errors import UserError
from sparsetune.eval.report import print_table


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def job_config(capsys, *args: str) -> dict:
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    return yaml.safe_load(out)


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"sparsetune {version('sparsetune')}"


def test_completion_options_in_help(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert "--install-completion" in out and "--show-completion" in out and "--version" in out


@pytest.mark.parametrize("spelling", [["--cfg"], ["--cfg", "job"], ["--cfg=job"], ["--cfg", "all"]])
def test_cfg_spellings(capsys, spelling):
    cfg = job_config(capsys, "train", "recipe=lora_llama", "method.r=4", *spelling)
    assert cfg["method"]["r"] == 4 and cfg["recipe"] == "lora_llama"


def test_cfg_before_overrides(capsys):
    cfg = job_config(capsys, "train", "--cfg", "job", "recipe=lora_llama", "method.r=4")
    assert cfg["method"]["r"] == 4


def test_user_recipe_file(capsys, tmp_path):
    recipe = tmp_path / "my recipe.v2.yaml"
    recipe.write_text("defaults:\n  - override /model: tiny_llama\n  - override /method: lora\n"
                      "description: mine\ntrainer:\n  max_steps: 7\nmethod:\n  r: 3\n")
    cfg = job_config(capsys, "train", f"recipe={recipe}", "--cfg", "job")
    assert cfg["model"]["name"] == "tiny_llama" and cfg["trainer"]["max_steps"] == 7 and cfg["method"]["r"] == 3
    # the run folder is named after the file's stem, sanitised, and always goes under the runs root
    assert cfg["recipe"] == "my_recipe.v2" and "/" not in cfg["recipe"]


def test_own_config_dir(capsys, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "recipe").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "name: mine\nname_or_path: tiny-llama\nsource: config\ntask: causal_lm\nmodel_type: llama\n"
        "config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,"
        " num_key_value_heads: 1, vocab_size: 512, max_position_embeddings: 128}\n")
    (tmp_path / "recipe" / "own.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mine\ndescription: own\ntrainer:\n  max_steps: 5\n")
    cfg = job_config(capsys, "train", "--config-dir", str(tmp_path), "model=mine", "--cfg", "job")
    assert cfg["model"]["name"] == "mine" and cfg["model"]["config"]["hidden_size"] == 32
    cfg = job_config(capsys, "train", f"--config-dir={tmp_path}", "recipe=own", "--cfg")
    assert cfg["model"]["name"] == "mine" and cfg["trainer"]["max_steps"] == 5 and cfg["recipe"] == "own"
    # the unknown-option check lists the user's options too
    code, _, err = run_main(capsys, "train", "--config-dir", str(tmp_path), "model=mien", "--cfg")
    assert code == 2 and re.search(r"available: .*\bmine\b", err)


def test_forget_classes_by_name_and_id(capsys):
    cfg = job_config(capsys, "forget", "--classes", "shirt,Coat", "--classes", "t-shirt,9", "--cfg", "job")
    assert cfg["forget"]["classes"] == [[6, 4], [0, 9]]
    assert cfg["data"]["name"] == "fashion_mnist"
    cfg = job_config(capsys, "forget", "--classes", "3,7", "--cfg")
    assert cfg["forget"]["classes"] == [[3, 7]]


def test_class_name_matching():
    names = list(FASHION_MNIST_CLASSES)
    assert class_id("shirt", names) == 6  # exact beats the prefix of T-shirt/top
    assert class_id("SHIRT", names) == 6
    assert class_id("top", names) == 0 and class_id("t_shirt", names) == 0
    assert class_id("ankle", names) == 9 and class_id("ankle boot", names) == 9
    assert class_id("sne", names) == 7
    assert resolve_classes(["bag, 1", "pull"], names) == [[8, 1], [2]]
    with pytest.raises(UserError, match="ambiguous"):
        class_id("s", names)
    with pytest.raises(UserError, match=r"valid: 0=T-shirt/top, .*9=Ankle boot"):
        class_id("hat", names)
    with pytest.raises(UserError, match="give ids"):
        class_id("cat", [])


def test_class_names_need_no_images():
    class Data:
        source = "fashion_mnist"
        path = "/nonexistent"

    assert class_names(Data())[6] == "Shirt"


def test_narrow_table_keeps_every_digit():
    rows = {"smollm2_135m_lora": {"train_loss": 1.3456, "params": 1772544, "trainable_share": 0.0123,
                                  "peak_memory_mb": 1234.5678, "wall_time_s": 123.456, "per_class": {"a": 1}},
            "baseline": {"train_loss": 2.5, "params": 134515008}}
    buf = io.StringIO()
    print_table("summary", rows, console=Console(file=buf, width=40))
    out = buf.getvalue()
    for text in ("smollm2_135m_lora", "baseline", "1.3456", "1,772,544", "0.0123", "1,234.57", "123.46",
                 "2.5000", "134,515,008", "trainable_share", "peak_memory_mb"):
        assert text in out, out
    assert "…" not in out and "per_class" not in out
    # wide enough: the usual table
    buf = io.StringIO()
    print_table("summary", rows, console=Console(file=buf, width=200))
    assert "┃" in buf.getvalue() and "1,772,544" in buf.getvalue() and "…" not in buf.getvalue()
