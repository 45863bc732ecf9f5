"""Data sets: where they are read from, and the DataSet record every loader starts from.

MNIST-like data sets are read from IDX files (plain or gzipped), CIFAR-10 from the python pickle
batches, ImageNet as a list of files (only the FFCV loader reads it), and `synthetic` is generated from
a seed. Nothing falls back silently to other data: a data set that is not found raises DataError
naming every place that was looked at and how to provide it.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmcsweep import seeds

ENV_VAR = "LMCSWEEP_DATA"
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


class DataError(Exception):
    """A data set that cannot be read; the message says where we looked and how to fix it."""


@dataclass
class DataSet:
    """A data set held as uint8 tensors [N, C, H, W] (or, for ImageNet, lists of files)."""

    name: str
    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str
    root: str | None
    train_files: list[tuple[str, int]] | None = field(default=None, repr=False)
    test_files: list[tuple[str, int]] | None = field(default=None, repr=False)

    def split(self, split: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(x, y) of 'train' or 'test'."""
        if split == "train":
            return self.train_x, self.train_y
        if split == "test":
            return self.test_x, self.test_y
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")

    def files(self, split: str) -> list[tuple[str, int]] | None:
        return self.train_files if split == "train" else self.test_files

    def num_examples(self, split: str) -> int:
        x, _ = self.split(split)
        if x is not None:
            return int(x.shape[0])
        files = self.files(split)
        return len(files) if files is not None else 0

    @property
    def file_backed(self) -> bool:
        return self.train_x is None


@dataclass(frozen=True)
class _Info:
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str


DATASETS: dict[str, _Info] = {
    "mnist": _Info(10, (1, 28, 28), (0.1307,), (0.3081,), "none"),
    "fashion_mnist": _Info(10, (1, 28, 28), (0.2860,), (0.3530,), "none"),
    "cifar10": _Info(10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip"),
    "imagenet": _Info(1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rrc_flip"),
    "synthetic": _Info(10, (3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "crop_flip"),
}

SYNTHETIC_DEFAULTS = {"shape": [3, 32, 32], "classes": 10, "train": 512, "test": 256, "seed": 0}


def load_dataset(name: str, root: str | None = None, download: bool = False,
                 subset_train: int | None = None, subset_test: int | None = None,
                 synthetic: dict | None = None) -> DataSet:
    """Read data set `name` (see DATASETS); keep the first `subset_*` examples of each split."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if root and not download and name != "synthetic" and not Path(root).is_dir():
        raise DataError(f"data set {name!r}: data.root {root} is not a folder (a typo? without data.root, "
                        f"$LMCSWEEP_DATA and the defaults are searched)")
    if name in ("mnist", "fashion_mnist"):
        data = _load_idx_dataset(name, root, download)
    elif name == "cifar10":
        data = _load_cifar10(root, download)
    elif name == "imagenet":
        data = _load_imagenet(root)
    else:
        data = make_synthetic(**(synthetic or {}))
    return _subset(data, subset_train, subset_test)


# ----------------------------------------------------------------------------- where to look

def candidates(name: str, root: str | None, extra: list[str]) -> list[Path]:
    """Folders to look in, in order: root (and root/<name>), $LMCSWEEP_DATA/<name>, `extra`."""
    places: list[Path] = []
    if root:
        places += [Path(root), Path(root) / name]
    env = os.environ.get(ENV_VAR)
    if env:
        places.append(Path(env) / name)
    places += [Path(p) for p in extra]
    seen, out = set(), []
    for p in places:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def _not_found(name: str, tried: list[Path], what: str, root: str | None, downloadable: bool,
               apt: str | None = None) -> DataError:
    lines = [f"data set {name!r} not found: looked for {what} in"]
    lines += [f"  - {p}" for p in tried] or ["  (nowhere: no root given and $LMCSWEEP_DATA unset)"]
    lines.append("Provide it in one of these ways:")
    lines.append(f"  - set data.root in the sweep file (or `lmcsweep data prepare --root`) to the folder"
                 f" holding {what}")
    lines.append(f"  - or set ${ENV_VAR} to a folder with a '{name}' subfolder"
                 f"{' (now ' + os.environ[ENV_VAR] + ')' if os.environ.get(ENV_VAR) else ''}")
    if apt:
        lines.append(f"  - or `apt-get install {apt}`")
    if downloadable:
        lines.append("  - or set `data.download: true` (with data.root) to download it"
                     " (needs internet)")
    return DataError("\n".join(lines))


# ----------------------------------------------------------------------------- IDX (MNIST-like)

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (plain or .gz) as a numpy array (uint8 data only, as in (Fashion-)MNIST)."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: IDX element type 0x{dtype_code:02x} is not supported (uint8 only)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset < count:
        raise DataError(f"{path}: file is truncated ({len(raw) - offset} of {count} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=offset).reshape(dims).copy()


def find_idx(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (folder / stem, folder / (stem + ".gz")):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def idx_places(name: str, root: str | None) -> list[Path]:
    places = candidates(name, root, [DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else [])
    if root:  # torchvision's own layout (root/MNIST/raw), e.g. after data.download
        places.insert(2, Path(root) / _TORCHVISION_FOLDER[name] / "raw")
    return places


def _load_idx_dataset(name: str, root: str | None, download: bool) -> DataSet:
    places = idx_places(name, root)
    if download and root:
        _torchvision_download(name, root)
    tried = []
    for folder in places:
        tried.append(folder)
        files = find_idx(folder)
        if files:
            arrays = {k: read_idx(p) for k, p in files.items()}
            return _from_arrays(name, arrays, str(folder))
    if download and not root:
        raise DataError(f"data set {name!r}: data.download needs data.root (where to download to)")
    what = "IDX files (" + ", ".join(s + "[.gz]" for s in _IDX_FILES.values()) + ")"
    raise _not_found(name, tried, what, root, downloadable=True,
                     apt="dataset-fashion-mnist" if name == "fashion_mnist" else None)


def _torchvision_download(name: str, root: str) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        for train in (True, False):
            cls(root, train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"data set {name!r}: download into {root} failed: {exc}") from exc


def _from_arrays(name: str, arrays: dict[str, np.ndarray], root: str) -> DataSet:
    info = DATASETS[name]
    tensors = {}
    for split in ("train", "test"):
        x = arrays[f"{split}_x"]
        y = arrays[f"{split}_y"]
        if x.ndim == 3:
            x = x[:, None]
        if x.shape[0] != y.shape[0]:
            raise DataError(f"data set {name!r} in {root}: {split} has {x.shape[0]} images"
                            f" but {y.shape[0]} labels")
        if tuple(x.shape[1:]) != info.shape:
            raise DataError(f"data set {name!r} in {root}: images are {tuple(x.shape[1:])},"
                            f" expected {info.shape}")
        tensors[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(x))
        tensors[f"{split}_y"] = torch.from_numpy(y.astype(np.int64))
    return DataSet(name=name, num_classes=info.num_classes, shape=info.shape, mean=info.mean,
                   std=info.std, augmentation=info.augmentation, root=root, **tensors)


# ----------------------------------------------------------------------------- CIFAR-10

CIFAR_FOLDER = "cifar-10-batches-py"


def _load_cifar10(root: str | None, download: bool) -> DataSet:
    if download and root:
        _torchvision_download("cifar10", root)
    places = candidates("cifar10", root, [])
    tried = []
    for base in places:
        for folder in (base / CIFAR_FOLDER, base):
            if folder in tried:
                continue
            tried.append(folder)
            if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
                return _read_cifar_folder(folder)
    raise _not_found("cifar10", tried, f"the python batches ({CIFAR_FOLDER}/data_batch_1..5,"
                     " test_batch)", root, downloadable=True)


def _read_cifar_folder(folder: Path) -> DataSet:
    def read(names):
        xs, ys = [], []
        for n in names:
            path = folder / n
            if not path.is_file():
                raise DataError(f"data set 'cifar10' in {folder}: {n} is missing")
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return _from_arrays("cifar10", {"train_x": train_x, "train_y": train_y,
                                    "test_x": test_x, "test_y": test_y}, str(folder))


# ----------------------------------------------------------------------------- ImageNet (files)

_IMAGE_EXTS = {".jpeg", ".jpg", ".png"}


def _load_imagenet(root: str | None) -> DataSet:
    tried = []
    for folder in candidates("imagenet", root, []):
        tried.append(folder)
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            classes = sorted(d.name for d in (folder / "train").iterdir() if d.is_dir())
            index = {c: i for i, c in enumerate(classes)}
            train = _list_image_folder(folder / "train", index)
            test = _list_image_folder(folder / "val", index)
            info = DATASETS["imagenet"]
            return DataSet(name="imagenet", train_x=None, train_y=None, test_x=None, test_y=None,
                           num_classes=len(classes), shape=info.shape, mean=info.mean,
                           std=info.std, augmentation=info.augmentation, root=str(folder),
                           train_files=train, test_files=test)
    raise _not_found("imagenet", tried, "an ImageFolder tree (train/<class>/*.JPEG,"
                     " val/<class>/*.JPEG)", root, downloadable=False)


def _list_image_folder(folder: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    out = []
    for cls in sorted(index):
        d = folder / cls
        if not d.is_dir():
            continue
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            if os.path.splitext(entry.name)[1].lower() in _IMAGE_EXTS:
                out.append((entry.path, index[cls]))
    return out


# ----------------------------------------------------------------------------- synthetic

def make_synthetic(shape=None, classes=None, train=None, test=None, seed=None) -> DataSet:
    """A learnable data set from a seed: per-class smooth colour patterns plus pixel noise, uint8.

    Each image is its class's pattern, part of another class's pattern (up to 0.9 of it), a
    per-image colour shift and pixel noise: easy enough to learn, hard enough not to be solved at once.

    The patterns are left-right symmetric and low-frequency, so crops of a few pixels and flips
    keep them recognisable; small networks reach well above chance within a few hundred steps.
    """
    d = SYNTHETIC_DEFAULTS
    shape = tuple(int(v) for v in (shape if shape is not None else d["shape"]))
    classes = int(classes if classes is not None else d["classes"])
    n_train = int(train if train is not None else d["train"])
    n_test = int(test if test is not None else d["test"])
    seed = int(seed if seed is not None else d["seed"])
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"synthetic: shape must be [C, H, W] of positive ints, not {list(shape)}")
    if classes < 2 or n_train < 1 or n_test < 1:
        raise DataError("synthetic: need classes >= 2, train >= 1 and test >= 1")
    c, h, w = shape
    gen = seeds.generator("synthetic", seed)
    coarse = torch.randn(classes, c, 4, 4, generator=gen)
    coarse = (coarse + coarse.flip(-1)) / 2  # mirror-symmetric: survives horizontal flips
    templates = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                                align_corners=False)
    templates = templates / templates.std(dim=(1, 2, 3), keepdim=True)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=gen)]
        distractor = torch.randint(0, classes, (n,), generator=gen)
        weight = 0.9 * torch.rand(n, 1, 1, 1, generator=gen)
        shift = 20 * torch.randn(n, c, 1, 1, generator=gen)
        noise = torch.randn(n, c, h, w, generator=gen)
        signal = templates[y] + weight * templates[distractor]   # another class's pattern mixed in
        x = 128 + shift + 30 * signal + 50 * noise
        return x.round().clamp(0, 255).to(torch.uint8), y.to(torch.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    mean = tuple(float(v) for v in (train_x.float() / 255).mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in (train_x.float() / 255).std(dim=(0, 2, 3)))
    return DataSet(name="synthetic", train_x=train_x, train_y=train_y, test_x=test_x,
                   test_y=test_y, num_classes=classes, shape=shape, mean=mean, std=std,
                   augmentation="crop_flip" if h >= 16 and w >= 16 else "none", root=None)


def _subset(data: DataSet, n_train: int | None, n_test: int | None) -> DataSet:
    for n, what in ((n_train, "subset_train"), (n_test, "subset_test")):
        if n is not None and n < 1:
            raise DataError(f"{what} must be a positive number of examples, not {n}")
    if n_train is not None:
        if data.train_x is not None:
            data.train_x, data.train_y = data.train_x[:n_train], data.train_y[:n_train]
        if data.train_files is not None:
            data.train_files = data.train_files[:n_train]
    if n_test is not None:
        if data.test_x is not None:
            data.test_x, data.test_y = data.test_x[:n_test], data.test_y[:n_test]
        if data.test_files is not None:
            data.test_files = data.test_files[:n_test]
    return data
