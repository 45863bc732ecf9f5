"""Data: data sets (datasets.py), seeded batch augmentation (augment.py), the in-memory loader
(tensor.py) and the FFCV loader (ffcv.py, the only ffcv importer). `make_loader` picks one."""

from __future__ import annotations

from lmcsweep.data.available import missing_dataset
from lmcsweep.data.datasets import DATASETS, DataError, DataSet, load_dataset
from lmcsweep.data.tensor import TensorLoader

LOADERS = ("tensor", "ffcv")

__all__ = ["DATASETS", "DataError", "DataSet", "LOADERS", "load_dataset", "make_loader", "missing_dataset"]


def make_loader(data: DataSet, split: str, batch_size: int, order_seed: int, aug_seed: int,
                augmentation: str | None = None, loader: str = "tensor", device: str = "cpu",
                ffcv_dir: str | None = None):
    """A TensorLoader or FFCVLoader over `split` of `data`; the two give identical batches.

    `augmentation` None means the data set's default; eval_batches never augments. With
    loader='ffcv' the split's .beton is written into ffcv_dir on first use.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if loader == "tensor":
        return TensorLoader(data, split, batch_size, order_seed, aug_seed, augmentation, device)
    if loader == "ffcv":
        from lmcsweep.data.ffcv import FFCVLoader

        return FFCVLoader(data, split, batch_size, order_seed, aug_seed, augmentation, device,
                          ffcv_dir=ffcv_dir)
    raise ValueError(f"loader must be one of {LOADERS}, not {loader!r}")
