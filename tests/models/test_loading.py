"""`model.source=config` must hand HF plain containers, also for nested maps
(label2id is stored as given, so a DictConfig there broke save_pretrained)."""

import json

from sparsetune.jobs.config import compose_job as compose
from sparsetune.models.loading import load_model


def test_nested_config_map_reaches_hf_as_plain_dict(tmp_path):
    cfg = compose(["model=tiny_vit", "model.config.num_labels=2",
                   "++model.config.id2label={0: coat, 1: bag}",
                   "++model.config.label2id={coat: 0, bag: 1}"])
    model, tokenizer = load_model(cfg.model)
    assert tokenizer is None
    assert model.config.id2label == {0: "coat", 1: "bag"}
    model.save_pretrained(tmp_path)  # crashed on an OmegaConf DictConfig before
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["id2label"] == {"0": "coat", "1": "bag"}
    assert saved["label2id"] == {"coat": 0, "bag": 1}
