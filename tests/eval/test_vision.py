"""Vision accuracy on a tiny random ViT against a hand count of its own predictions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sparsetune.errors import DataError
from sparsetune.eval.vision import evaluate_vision
from sparsetune.models.tiny import build_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vit():
    spec = yaml.safe_load((ROOT / "recipes/model/tiny_vit.yaml").read_text())
    return build_tiny(spec["model_type"], spec["config"], task="image_classification")


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 1, 28, 28, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)  # only classes 0-3 present
    return [{"pixel_values": pixels[i], "labels": int(labels[i])} for i in range(n)]


def test_per_class_accuracy_matches_hand_count(vit):
    data = _data()
    vit.eval()
    with torch.no_grad():
        preds = vit(pixel_values=torch.stack([d["pixel_values"] for d in data])).logits.argmax(-1)
    # make the labels agree with the model on about half of the items, so accuracy is not trivial
    data = [dict(d, labels=int(preds[i]) if i % 2 == 0 else d["labels"]) for i, d in enumerate(data)]
    names = [f"c{i}" for i in range(10)]
    hits: dict[str, list[int]] = {}
    for d, p in zip(data, preds):
        hits.setdefault(names[d["labels"]], []).append(int(p == d["labels"]))

    vit.train()
    res = evaluate_vision(vit, data, batch_size=7, num_classes=10, class_names=names)

    assert vit.training  # train mode restored
    assert res["n"] == len(data)
    assert res["top1"] == pytest.approx(sum(map(sum, hits.values())) / len(data))
    assert set(res["per_class"]) == set(hits)
    for name, h in hits.items():
        assert res["per_class"][name] == pytest.approx(sum(h) / len(h))


def test_label_out_of_range(vit):
    with pytest.raises(DataError, match="outside"):
        evaluate_vision(vit, [{"pixel_values": torch.zeros(1, 28, 28), "labels": 12}], 4, 10)
