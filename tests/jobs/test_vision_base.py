"""The project's ViT base is trained and cached by the job layer on first use; loading never trains."""

from pathlib import Path

import pytest

from sparsetune.errors import UserError
from sparsetune.jobs import vision_base
from sparsetune.jobs.config import compose_job as compose
from sparsetune.models import load_model

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_built_on_first_use_then_loaded_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(vision_base, "BUILD_OVERRIDES", [
        "trainer.max_steps=2", "trainer.batch_size=16", "trainer.warmup_steps=0", "trainer.save_every=0",
        "data.train_size=64", "data.val_size=16", "eval=none"])
    cfg = compose(["model=vit_fmnist"])
    with pytest.raises(UserError, match="not cached"):
        load_model(cfg.model)  # loading a model never trains one
    vision_base.ensure_vision_base(cfg.model)
    model, tokenizer = load_model(cfg.model)
    folder = tmp_path / "models" / "vit_fmnist"
    assert (folder / "config.json").is_file() and tokenizer is None
    assert model.config.num_labels == 10 and type(model).__name__ == "ViTForImageClassification"
    stamp = (folder / "config.json").stat().st_mtime_ns
    monkeypatch.setattr(vision_base, "BUILD_OVERRIDES", ["trainer.max_steps=nope"])  # a rebuild would fail
    vision_base.ensure_vision_base(cfg.model)
    load_model(cfg.model)
    assert (folder / "config.json").stat().st_mtime_ns == stamp
