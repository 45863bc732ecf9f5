"""FFCV: .beton files and a loader over them; the only module that imports ffcv (lazily).

Images of in-memory data sets are stored raw (NDArrayField, uint8 [C, H, W]) so they read back
bit-exact; ImageNet files are stored as FFCV RGB images (JPEG, max side 256). The loader reads in
SEQUENTIAL order over an explicit index list, which is the project's own per-epoch permutation
(tensor.epoch_order), and then applies the same seeded batch augmentation as the tensor loader: for
the same seeds the two loaders give bit-identical batches.

A .beton's name holds a digest of its contents (data set, split, size, bytes), so a file is reused
only for the very same data; files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from multiprocessing import cpu_count
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lmcsweep.data.datasets import ENV_VAR, DataError, DataSet, load_dataset
from lmcsweep.data.tensor import Batch, BaseLoader, iteration_plan

IMAGENET_MAX_SIDE = 256
IMAGENET_TRAIN_SIDE = 256   # train images are decoded as a 256x256 centre square, then rrc_flip
IMAGENET_EVAL_RATIO = 224 / 256


def require_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError as exc:
        raise DataError("the ffcv loader needs the ffcv package (pip install ffcv==1.0.2, which needs"
                        " pkg-config, libturbojpeg and libopencv); or use data.loader: tensor") from exc
    return ffcv


def _default_workers() -> int:
    """FFCV pipeline threads: one core is left to the training loop (on a busy 2-CPU machine, 2
    threads were up to 40x slower than 1: every hand-off between them waits for a time slice)."""
    return max(1, min(cpu_count() - 1, 8))


def default_ffcv_dir() -> Path:
    """$LMCSWEEP_DATA/ffcv if set, else ./data/ffcv."""
    env = os.environ.get(ENV_VAR)
    return Path(env) / "ffcv" if env else Path("data") / "ffcv"


# ----------------------------------------------------------------------------- writing

def data_digest(data: DataSet, split: str) -> str:
    """A short digest of a split's contents (images, labels or file list)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{data.name}|{split}|{data.shape}".encode())
    x, y = data.split(split)
    if x is not None:
        h.update(x.contiguous().numpy().tobytes())
        h.update(y.contiguous().numpy().tobytes())
    else:
        for path, label in data.files(split) or []:
            h.update(f"{path}\x1f{label}\n".encode())
    return h.hexdigest()


def beton_path(data: DataSet, split: str, out_dir: str | os.PathLike) -> Path:
    n = data.num_examples(split)
    return Path(out_dir) / f"{data.name}-{split}-{n}-{data_digest(data, split)}.beton"


class _ArrayItems:
    """(image uint8 [C, H, W], label) pairs for DatasetWriter."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x = np.ascontiguousarray(x.cpu().numpy())
        self.y = y.cpu().numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class _FileItems:
    """(image uint8 [H, W, 3], label) pairs read from image files."""

    def __init__(self, files: list[tuple[str, int]]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB")), int(label)


def write_beton(data: DataSet, split: str, path: str | os.PathLike, progress: bool = True,
                num_workers: int | None = None) -> Path:
    """Write one split of `data` to the .beton `path` (via a temporary file, renamed at the end)."""
    require_ffcv()
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = data.split(split)
    if x is not None:
        items = _ArrayItems(x, y)
        image_field = NDArrayField(np.dtype("uint8"), tuple(int(s) for s in x.shape[1:]))
    else:
        files = data.files(split)
        if not files:
            raise DataError(f"data set {data.name!r} has no {split} examples to write")
        items = _FileItems(files)
        image_field = RGBImageField(write_mode="smart", max_resolution=IMAGENET_MAX_SIDE,
                                    jpeg_quality=90)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer = DatasetWriter(str(tmp), {"image": image_field, "label": IntField()},
                           num_workers=num_workers or _default_workers())
    quiet = {} if progress else {"TQDM_DISABLE": "1"}
    try:
        with _env(quiet):
            writer.from_indexed_dataset(items, chunksize=max(1, min(1000, len(items) // 16 + 1)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def beton_complete(path: str | os.PathLike, num_examples: int) -> bool:
    """Whether `path` exists and is a readable .beton with `num_examples` examples."""
    if not Path(path).is_file():
        return False
    from ffcv.reader import Reader

    try:
        return int(Reader(str(path)).num_samples) == num_examples
    except Exception:
        return False


def prepare_data(data: DataSet, out_dir: str | os.PathLike, splits=("train", "test"),
                 progress: bool = True) -> dict[str, Path]:
    """The .beton of each split of `data` in out_dir, written unless already there and complete."""
    require_ffcv()
    out = {}
    for split in splits:
        path = beton_path(data, split, out_dir)
        if not beton_complete(path, data.num_examples(split)):
            write_beton(data, split, path, progress=progress)
        out[split] = path
    return out


def prepare(name: str, root: str | None, out_dir: str | os.PathLike, download: bool = False,
            subset_train: int | None = None, subset_test: int | None = None,
            synthetic: dict | None = None, progress: bool = True) -> dict[str, Path]:
    """Load data set `name` and write its .beton files into out_dir (skipped when complete)."""
    data = load_dataset(name, root=root, download=download, subset_train=subset_train,
                        subset_test=subset_test, synthetic=synthetic)
    return prepare_data(data, out_dir, progress=progress)


# ----------------------------------------------------------------------------- reading

class FFCVLoader(BaseLoader):
    """Batches read from a .beton by FFCV, in the project's order, augmented like TensorLoader."""

    def __init__(self, data: DataSet, split: str, batch_size: int, order_seed: int, aug_seed: int,
                 augmentation: str | None = None, device: str = "cpu",
                 ffcv_dir: str | os.PathLike | None = None, num_workers: int | None = None,
                 progress: bool = True):
        require_ffcv()
        super().__init__(data, split, batch_size, order_seed, aug_seed, augmentation, device)
        if ffcv_dir is None:
            ffcv_dir = default_ffcv_dir()
        self.path = prepare_data(data, ffcv_dir, splits=(split,), progress=progress)[split]
        self.num_workers = num_workers or _default_workers()
        self._train_loader = None
        self._eval_loaders: dict[int, object] = {}

    def _pipelines(self, train: bool):
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.ndarray import NDArrayDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
        from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

        to_device = ([ToDevice(self.device, non_blocking=True)]
                     if self.device.type == "cuda" else [])
        if self.data.file_backed:
            side = IMAGENET_TRAIN_SIDE if train else self.size[0]
            ratio = 1.0 if train else IMAGENET_EVAL_RATIO
            image = [CenterCropRGBImageDecoder((side, side), ratio=ratio), ToTensor(),
                     *to_device, ToTorchImage(channels_last=False)]
        else:
            image = [NDArrayDecoder(), ToTensor(), *to_device]
        return {"image": image, "label": [IntDecoder(), ToTensor(), *to_device]}

    def _loader(self, batch_size: int, indices: np.ndarray, train: bool, drop_last: bool):
        from ffcv.loader import Loader, OrderOption

        return Loader(str(self.path), batch_size=batch_size, num_workers=self.num_workers,
                      order=OrderOption.SEQUENTIAL, indices=indices,
                      pipelines=self._pipelines(train), drop_last=drop_last, os_cache=True,
                      seed=0)

    @staticmethod
    def _set_indices(loader, indices: np.ndarray) -> None:
        # SEQUENTIAL order reads loader.indices; point it at this epoch's permutation.
        loader.indices = indices
        loader.traversal_order.indices = indices
        loader.first_traversal_order = indices

    def _read(self, loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(loader)
        try:
            for x, y in it:
                # FFCV reuses its batch buffers: every tensor yielded onwards is a fresh one.
                yield x, y.reshape(-1).to(torch.int64, copy=True)
        finally:
            it.close()

    def train_batches(self, start: int, end: int) -> Iterator[Batch]:
        bs = self.batch_size
        for epoch, b0, b1 in iteration_plan(start, end, self.iterations_per_epoch):
            order = self.epoch_order(epoch)[b0 * bs:b1 * bs].numpy().astype(np.uint64)
            if self._train_loader is None:
                self._train_loader = self._loader(bs, order, train=True, drop_last=True)
            self._set_indices(self._train_loader, order)
            for k, (x, y) in enumerate(self._read(self._train_loader)):
                yield self.finish(x, epoch, b0 + k), y

    def eval_batches(self, batch_size: int = 1000, limit: int | None = None) -> Iterator[Batch]:
        n = self.num_examples if limit is None else min(limit, self.num_examples)
        if n == 0:
            return
        indices = np.arange(n, dtype=np.uint64)
        loader = self._eval_loaders.get(batch_size)
        if loader is None:
            loader = self._loader(batch_size, indices, train=False, drop_last=False)
            self._eval_loaders[batch_size] = loader
        self._set_indices(loader, indices)
        for x, y in self._read(loader):
            yield self.finish_eval(x), y
