"""The in-memory loader: the whole split as uint8 on the device, batches built with tensor ops.

The order of every epoch is a function of (data_order seed, epoch), and each example's augmentation
of (augmentation seed, epoch, example): a run that resumes at iteration k sees exactly the batches it
would have seen, and copies that differ only in data order see every example augmented alike (see
`epoch_order`, `augmentation_generator`); the FFCV loader uses the same two functions.
"""

from __future__ import annotations

from typing import Iterator

import torch

from lmcsweep import seeds
from lmcsweep.data.augment import AUGMENTATIONS, epoch_draws, normalizer, prepare_batch
from lmcsweep.data.datasets import DataError, DataSet

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_order(num_examples: int, order_seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch `epoch` (CPU int64)."""
    return torch.randperm(num_examples, generator=seeds.generator("data_order", order_seed, epoch))


def augmentation_generator(aug_seed: int, epoch: int) -> torch.Generator:
    """The only source of augmentation draws in epoch `epoch`: `augment.epoch_draws` takes every
    example's draws from it in example order (not data order)."""
    return seeds.generator("augmentation", aug_seed, epoch)


def iteration_plan(start: int, end: int, iterations_per_epoch: int) -> Iterator[tuple[int, int, int]]:
    """(epoch, first batch, end batch) for the global iterations start .. end-1, one per epoch."""
    if start < 0 or end < start:
        raise ValueError(f"need 0 <= start <= end, got start={start}, end={end}")
    it = start
    while it < end:
        epoch, b0 = divmod(it, iterations_per_epoch)
        b1 = min(iterations_per_epoch, b0 + (end - it))
        yield epoch, b0, b1
        it += b1 - b0


class BaseLoader:
    """What TensorLoader and FFCVLoader share: sizes, seeds, the per-epoch order, the batch recipe."""

    def __init__(self, data: DataSet, split: str, batch_size: int, order_seed: int, aug_seed: int,
                 augmentation: str | None, device: str):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        augmentation = data.augmentation if augmentation is None else augmentation
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {augmentation!r}")
        self.data = data
        self.split = split
        self.batch_size = batch_size
        self.order_seed = order_seed
        self.aug_seed = aug_seed
        self.augmentation = augmentation
        self.device = torch.device(device)
        self.num_examples = data.num_examples(split)
        self.iterations_per_epoch = self.num_examples // batch_size
        if self.iterations_per_epoch < 1:
            raise DataError(f"{data.name} {split}: {self.num_examples} examples is fewer than one"
                            f" batch of {batch_size}")
        self.norm = normalizer(data.mean, data.std, self.device)
        self.size = tuple(data.shape[1:])
        self._order_cache: tuple[int, torch.Tensor] | None = None
        self._draws_cache: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, epoch_order(self.num_examples, self.order_seed, epoch))
        return self._order_cache[1]

    def epoch_draws(self, epoch: int) -> torch.Tensor:
        """Every example's augmentation draws in epoch `epoch` (row i: example i)."""
        if self._draws_cache is None or self._draws_cache[0] != epoch:
            gen = augmentation_generator(self.aug_seed, epoch)
            self._draws_cache = (epoch, epoch_draws(self.augmentation, self.num_examples, gen))
        return self._draws_cache[1]

    def batch_indices(self, epoch: int, batch: int) -> torch.Tensor:
        b = self.batch_size
        return self.epoch_order(epoch)[batch * b:(batch + 1) * b]

    def finish(self, x_uint8: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """Augment (each example by its own draws of this epoch) and normalise training batch
        `batch` of `epoch`, whose examples are `batch_indices(epoch, batch)`."""
        if self.augmentation == "none":  # no draws to make
            return prepare_batch(x_uint8, "none", None, self.norm, self.size)
        draws = self.epoch_draws(epoch)[self.batch_indices(epoch, batch)]
        return prepare_batch(x_uint8, self.augmentation, draws, self.norm, self.size)

    def finish_eval(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return prepare_batch(x_uint8, "none", None, self.norm, self.size)

    def __len__(self) -> int:
        return self.iterations_per_epoch


class TensorLoader(BaseLoader):
    """Batches gathered from the split held in memory (on `device`) as uint8."""

    def __init__(self, data: DataSet, split: str, batch_size: int, order_seed: int, aug_seed: int,
                 augmentation: str | None = None, device: str = "cpu"):
        x, y = data.split(split)
        if x is None:
            raise DataError(f"data set {data.name!r} is file-backed; use the ffcv loader"
                            " (data.loader: ffcv)")
        super().__init__(data, split, batch_size, order_seed, aug_seed, augmentation, device)
        self.x = x.to(self.device).contiguous()
        self.y = y.to(self.device)

    def train_batches(self, start: int, end: int) -> Iterator[Batch]:
        for epoch, b0, b1 in iteration_plan(start, end, self.iterations_per_epoch):
            for b in range(b0, b1):
                idx = self.batch_indices(epoch, b).to(self.device, non_blocking=True)
                yield self.finish(self.x[idx], epoch, b), self.y[idx]

    def eval_batches(self, batch_size: int = 1000, limit: int | None = None) -> Iterator[Batch]:
        n = self.num_examples if limit is None else min(limit, self.num_examples)
        for i in range(0, n, batch_size):
            j = min(n, i + batch_size)
            yield self.finish_eval(self.x[i:j]), self.y[i:j]
