"""FFCV: .beton files read back bit-exact; the FFCV loader equals the tensor loader batch for batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from lmcsweep.data import load_dataset, make_loader  # noqa: E402
from lmcsweep.data.datasets import DEBIAN_FASHION_MNIST  # noqa: E402
from lmcsweep.data.ffcv import FFCVLoader, beton_path, prepare, prepare_data, write_beton  # noqa: E402


def read_beton(path, n_expected):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    loader = Loader(str(path), batch_size=97, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={"image": [NDArrayDecoder(), ToTensor()],
                                                "label": [IntDecoder(), ToTensor()]})
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.clone())
        ys.append(y.reshape(-1).clone())
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(y) == n_expected
    return x, y


@pytest.fixture(scope="module")
def cifar_like():
    return load_dataset("synthetic", synthetic={"shape": [3, 32, 32], "train": 600, "test": 100,
                                                "seed": 3})


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST).is_dir(), reason="needs Fashion-MNIST")
def test_fashion_mnist_slice_roundtrip(tmp_path):
    data = load_dataset("fashion_mnist", subset_train=500, subset_test=300)
    paths = prepare("fashion_mnist", None, tmp_path, subset_train=500, subset_test=300,
                    progress=False)
    for split in ("train", "test"):
        x, y = read_beton(paths[split], data.num_examples(split))
        want_x, want_y = data.split(split)
        assert x.dtype == torch.uint8 and x.shape == want_x.shape
        assert torch.equal(x, want_x) and torch.equal(y.long(), want_y)


def test_synthetic_cifar_roundtrip_and_skip(tmp_path, cifar_like):
    path = tmp_path / "train.beton"
    write_beton(cifar_like, "train", path, progress=False)
    x, y = read_beton(path, 600)
    assert torch.equal(x, cifar_like.train_x) and torch.equal(y.long(), cifar_like.train_y)
    assert not list(tmp_path.glob("*.tmp*"))
    # prepare_data skips complete files and names them by content
    paths = prepare_data(cifar_like, tmp_path, progress=False)
    mtime = paths["train"].stat().st_mtime_ns
    assert prepare_data(cifar_like, tmp_path, progress=False) == paths
    assert paths["train"].stat().st_mtime_ns == mtime
    other = load_dataset("synthetic", synthetic={"train": 600, "test": 100, "seed": 4})
    assert beton_path(other, "train", tmp_path) != paths["train"]
    # a truncated file is not "complete": it is written again
    paths["test"].write_bytes(paths["test"].read_bytes()[:1000])
    prepare_data(cifar_like, tmp_path, progress=False)
    x, _ = read_beton(paths["test"], 100)
    assert torch.equal(x, cifar_like.test_x)


@pytest.mark.parametrize("augmentation", ["crop_flip", "none"])
def test_ffcv_and_tensor_loaders_bit_identical(tmp_path, cifar_like, augmentation):
    kw = dict(batch_size=64, order_seed=11, aug_seed=12, augmentation=augmentation)
    tensor = make_loader(cifar_like, "train", loader="tensor", **kw)
    ffcv = make_loader(cifar_like, "train", loader="ffcv", ffcv_dir=str(tmp_path), **kw)
    assert isinstance(ffcv, FFCVLoader)
    assert ffcv.iterations_per_epoch == tensor.iterations_per_epoch == 9
    a = list(tensor.train_batches(0, 20))      # three epochs, the last partial
    b = list(ffcv.train_batches(0, 20))
    assert len(a) == len(b) == 20
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # resuming mid-epoch on the FFCV loader gives the tail
    tail = list(ffcv.train_batches(13, 20))
    assert all(torch.equal(x, a[13 + i][0]) and torch.equal(y, a[13 + i][1])
               for i, (x, y) in enumerate(tail))
    # abandoning an iteration early leaves the loader usable
    next(iter(ffcv.train_batches(0, 9)))
    again = list(ffcv.train_batches(2, 4))
    assert torch.equal(again[0][0], a[2][0]) and torch.equal(again[1][1], a[3][1])


def test_ffcv_eval_batches(tmp_path, cifar_like):
    tensor = make_loader(cifar_like, "test", 32, 0, 0)
    ffcv = make_loader(cifar_like, "test", 32, 0, 0, loader="ffcv", ffcv_dir=str(tmp_path))
    a = list(tensor.eval_batches(batch_size=40))
    b = list(ffcv.eval_batches(batch_size=40))
    assert [len(y) for _, y in b] == [40, 40, 20]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sum(len(y) for _, y in ffcv.eval_batches(batch_size=40, limit=50)) == 50
    assert np.isclose(torch.cat([x for x, _ in b]).mean().item(), 0.0, atol=0.2)
