"""Data sets and the tensor loader: real Fashion-MNIST, seeded order and augmentation, resuming."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from lmcsweep.data import DATASETS, DataError, load_dataset, make_loader
from lmcsweep.data.augment import crop_flip, normalizer, prepare_batch
from lmcsweep.data.datasets import DEBIAN_FASHION_MNIST
from lmcsweep.data.tensor import epoch_order

HAVE_FASHION = Path(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion_mnist")


@pytest.fixture(scope="module")
def cifar_like():
    return load_dataset("synthetic", synthetic={"shape": [3, 32, 32], "train": 640, "test": 128})


def batches(data, start, end, order_seed=0, aug_seed=0, batch_size=64, augmentation=None):
    loader = make_loader(data, "train", batch_size, order_seed, aug_seed, augmentation)
    return list(loader.train_batches(start, end))


@needs_fashion
def test_fashion_mnist_shapes_and_labels(fashion):
    assert fashion.train_x.shape == (60000, 1, 28, 28) and fashion.train_x.dtype == torch.uint8
    assert fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.train_y.shape == (60000,) and fashion.train_y.dtype == torch.int64
    assert fashion.num_classes == 10 and fashion.shape == (1, 28, 28)
    assert fashion.augmentation == "none"
    # every class present, 6000 each (the published split), and pixels use the whole range
    assert torch.bincount(fashion.train_y).tolist() == [6000] * 10
    assert int(fashion.train_x.max()) == 255 and int(fashion.train_x.min()) == 0
    # the published mean/std we normalise with match the data
    x = fashion.train_x.float() / 255
    assert abs(x.mean().item() - fashion.mean[0]) < 1e-3
    assert abs(x.std().item() - fashion.std[0]) < 1e-3


@needs_fashion
def test_root_and_env_var_plain_idx(tmp_path, monkeypatch):
    # plain (un-gzipped) IDX files under $LMCSWEEP_DATA/fashion_mnist, subset taken from the front
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    for f in Path(DEBIAN_FASHION_MNIST).glob("*.gz"):
        (folder / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    monkeypatch.setenv("LMCSWEEP_DATA", str(tmp_path))
    (tmp_path / "empty").mkdir()
    full = load_dataset("fashion_mnist", root=str(tmp_path / "empty"))
    assert full.root == str(folder)
    small = load_dataset("fashion_mnist", subset_train=100, subset_test=50)
    assert small.train_x.shape[0] == 100 and small.test_x.shape[0] == 50
    assert torch.equal(small.train_x, full.train_x[:100])


def test_missing_dataset_lists_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCSWEEP_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError, match="is not a folder"):  # a typo'd root is not passed over
        load_dataset("fashion_mnist", root=str(tmp_path / "mine"))
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=str(tmp_path / "mine"))
    msg = str(err.value)
    for place in (tmp_path / "mine", tmp_path / "mine" / "mnist", tmp_path / "env" / "mnist"):
        assert f"  - {place}\n" in msg
    assert "data.root" in msg and "LMCSWEEP_DATA" in msg and "data.download: true" in msg
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=str(tmp_path / "mine"))
    assert str(tmp_path / "mine" / "cifar-10-batches-py") in str(err.value)


def test_missing_fashion_mnist_mentions_apt(tmp_path, monkeypatch):
    monkeypatch.setenv("LMCSWEEP_DATA", str(tmp_path))
    monkeypatch.setattr("lmcsweep.data.datasets.DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def test_truncated_idx_is_reported(tmp_path):
    if not HAVE_FASHION:
        pytest.skip("needs Fashion-MNIST")
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    for f in Path(DEBIAN_FASHION_MNIST).glob("*.gz"):
        shutil.copy(f, folder / f.name)
    raw = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:100]))
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion_mnist", root=str(folder))


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("mnist2")
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "imagenet", "synthetic"}


def test_same_seeds_same_batches(cifar_like):
    a = batches(cifar_like, 0, 12, order_seed=3, aug_seed=4)
    b = batches(cifar_like, 0, 12, order_seed=3, aug_seed=4)
    assert len(a) == 12
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a[0][0].dtype == torch.float32 and a[0][0].shape == (64, 3, 32, 32)


def test_aug_seed_changes_only_augmentation(cifar_like):
    # With the same order, the batches hold the same examples: unaugmented they are equal.
    base = batches(cifar_like, 0, 10, order_seed=1, aug_seed=1)
    other_aug = batches(cifar_like, 0, 10, order_seed=1, aug_seed=2)
    for (xa, ya), (xb, yb) in zip(base, other_aug):
        assert torch.equal(ya, yb)
        assert not torch.equal(xa, xb)
    plain_a = batches(cifar_like, 0, 10, order_seed=1, aug_seed=1, augmentation="none")
    plain_b = batches(cifar_like, 0, 10, order_seed=1, aug_seed=2, augmentation="none")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain_a, plain_b))


def test_order_seed_changes_only_order(cifar_like):
    # Same aug seed, other order: the batches hold other examples, but every example of an epoch is
    # augmented alike in both (its draws belong to the example, not to its place in a batch), so a
    # "data order only" copy really sees the same augmentation.
    a = batches(cifar_like, 0, 20, order_seed=1, aug_seed=5)
    b = batches(cifar_like, 0, 20, order_seed=2, aug_seed=5)
    la = make_loader(cifar_like, "train", 64, 1, 5)
    lb = make_loader(cifar_like, "train", 64, 2, 5)
    per_epoch = la.iterations_per_epoch
    assert per_epoch == 640 // 64
    for epoch in range(2):
        seen = {}
        for loader, got in ((la, a), (lb, b)):
            images = torch.cat([x for x, _ in got[epoch * per_epoch:(epoch + 1) * per_epoch]])
            order = torch.cat([loader.batch_indices(epoch, i) for i in range(per_epoch)])
            seen[loader.order_seed] = images[torch.argsort(order)]  # row i: example i
        assert torch.equal(seen[1], seen[2])
    assert any(not torch.equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))
    # and the two epochs augment an example differently, as do two augmentation seeds
    other = batches(cifar_like, 0, 10, order_seed=1, aug_seed=6)
    assert not torch.equal(torch.cat([x for x, _ in a[:10]]), torch.cat([x for x, _ in other]))


def test_neighbouring_seeds_share_no_epoch_order():
    n = 1000
    orders = {s: [epoch_order(n, s, e) for e in range(5)] for s in (7, 8)}
    for pa in orders[7]:
        for pb in orders[8]:
            assert not torch.equal(pa, pb)
    # and epochs of one seed differ from each other (no seed + epoch replay)
    assert not torch.equal(orders[7][0], orders[7][1])
    for perm in orders[7]:
        assert torch.equal(perm.sort().values, torch.arange(n))


def test_epoch_order_is_the_documented_permutation(cifar_like):
    from lmcsweep import seeds

    loader = make_loader(cifar_like, "train", 64, order_seed=9, aug_seed=0, augmentation="none")
    perm = torch.randperm(640, generator=seeds.generator("data_order", 9, 1))
    got = list(loader.train_batches(10, 12))  # epoch 1, batches 0 and 1
    assert torch.equal(got[0][1], cifar_like.train_y[perm[:64]])
    assert torch.equal(got[1][1], cifar_like.train_y[perm[64:128]])


def test_resume_equals_tail(cifar_like):
    full = batches(cifar_like, 0, 25)            # crosses two epoch boundaries (10 per epoch)
    tail = batches(cifar_like, 7, 25)
    assert len(tail) == 18
    for (xa, ya), (xb, yb) in zip(full[7:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert batches(cifar_like, 5, 5) == []


def test_crop_flip_is_a_real_shift_and_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    found_shift = found_flip = False
    for s in range(40):
        draws = torch.rand(2, 3, generator=torch.Generator().manual_seed(s))
        out = crop_flip(x, draws, pad=2)
        assert out.shape == x.shape
        for i in range(2):
            dy, dx = int(draws[i, 0] * 5), int(draws[i, 1] * 5)  # offsets 0..4 for pad 2
            padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
            want = padded[:, dy:dy + 8, dx:dx + 8]
            if draws[i, 2] < 0.5:
                want = want.flip(-1)
                found_flip = True
            assert torch.equal(out[i], want)
            if (dy, dx) != (2, 2):
                found_shift = True
                assert not torch.equal(out[i], x[i])
    assert found_shift and found_flip
    # zero padding enters the image: some shifted output has zeros where x has none
    assert (crop_flip(x, torch.rand(2, 3, generator=torch.Generator().manual_seed(0)), pad=4) == 0).any()
    # a draw just below 1 gives the last offset, not one past it
    edge = crop_flip(x, torch.tensor([[0.9999999, 0.9999999, 0.9]] * 2), pad=2)
    assert torch.equal(edge[0], torch.nn.functional.pad(x[0], (2, 2, 2, 2))[:, 4:12, 4:12])


def test_crop_flip_batch_from_loader(cifar_like):
    loader = make_loader(cifar_like, "train", 64, 0, 0)
    x, _ = next(iter(loader.train_batches(0, 1)))
    raw = cifar_like.train_x[loader.batch_indices(0, 0)]
    plain = prepare_batch(raw, "none", None, normalizer(cifar_like.mean, cifar_like.std, "cpu"))
    assert x.shape == (64, 3, 32, 32)
    differs = [(not torch.equal(x[i], plain[i])) for i in range(64)]
    assert sum(differs) > 50  # 1/81 of crops are centred and unflipped


def test_eval_batches_in_file_order(cifar_like):
    loader = make_loader(cifar_like, "test", 64, 0, 0)
    got = list(loader.eval_batches(batch_size=50))
    assert [len(y) for _, y in got] == [50, 50, 28]
    assert torch.equal(torch.cat([y for _, y in got]), cifar_like.test_y)
    x = torch.cat([x for x, _ in got])
    mean = torch.tensor(cifar_like.mean).view(1, 3, 1, 1)
    std = torch.tensor(cifar_like.std).view(1, 3, 1, 1)
    want = (cifar_like.test_x.float() / 255 - mean) / std
    assert torch.allclose(x, want, atol=1e-5)
    assert sum(len(y) for _, y in loader.eval_batches(limit=70)) == 70


def test_synthetic_deterministic_per_seed_and_learnable():
    a = load_dataset("synthetic", synthetic={"seed": 1})
    b = load_dataset("synthetic", synthetic={"seed": 1})
    c = load_dataset("synthetic", synthetic={"seed": 2})
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (512, 3, 32, 32) and a.test_x.shape == (256, 3, 32, 32)
    assert a.train_x.dtype == torch.uint8 and a.num_classes == 10
    # learnable: nearest class mean (from train) classifies test far above chance (10%)
    means = torch.stack([a.train_x[a.train_y == k].float().mean(0) for k in range(10)])
    dist = torch.cdist(a.test_x.float().flatten(1), means.flatten(1))
    acc = (dist.argmin(1) == a.test_y).float().mean().item()
    assert acc > 0.5
    small = load_dataset("synthetic", synthetic={"shape": [1, 8, 8], "classes": 3, "train": 30,
                                                 "test": 9, "seed": 0})
    assert small.train_x.shape == (30, 1, 8, 8) and small.num_classes == 3


def test_bad_arguments(cifar_like):
    with pytest.raises(ValueError, match="augmentation"):
        make_loader(cifar_like, "train", 64, 0, 0, augmentation="jitter")
    with pytest.raises(ValueError, match="loader"):
        make_loader(cifar_like, "train", 64, 0, 0, loader="dali")
    with pytest.raises(DataError, match="fewer than one batch"):
        make_loader(cifar_like, "test", 1000, 0, 0)


def test_runner_reads_the_data_set_once_and_in_the_background(tmp_path, write_sweep):
    """`lmcsweep run` starts reading the data set while MLflow answers; the first job gets that
    copy, later ones (and Optuna trials) the same; a missing data set fails where it is needed."""
    from lmcsweep.config import load_sweep
    from lmcsweep.store import Store
    from lmcsweep.run.scheduler import Runner
    from lmcsweep.tracking import Tracker

    sweep = load_sweep(write_sweep())
    runner = Runner(Tracker(root=tmp_path / "store"), Store(tmp_path / "store"), progress=False)
    assert runner.dataset(sweep, "fashion_mnist", background=True) is None
    first = runner.dataset(sweep, "fashion_mnist")
    assert runner.dataset(sweep, "fashion_mnist") is first
    direct = load_dataset("fashion_mnist", subset_train=600, subset_test=300)
    assert torch.equal(first.split("train")[0], direct.split("train")[0])
    missing = sweep.model_copy(update={"data": sweep.data.model_copy(update={"root": str(tmp_path / "none")})})
    assert runner.dataset(missing, "cifar10", background=True) is None  # no error yet
    with pytest.raises(DataError, match="(?i)cifar"):
        runner.dataset(missing, "cifar10")
