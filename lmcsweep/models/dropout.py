"""Dropout whose masks are a function of (seed, iteration), not of torch's global generator.

Dropout is SGD noise like the data order and the augmentation, so it must come from a recorded seed
to keep a run reproducible and resumable: `train.train` sets `key` = (the job's augmentation seed,
the iteration) on every `SeededDropout` of the network before each step, and the mask is drawn from a
CPU generator keyed on it (so it does not depend on the device either). One mask per module and step.
The mask belongs to a place in the batch, not to an example (unlike the augmentation draws): copies
that differ only in data order drop different units of an example.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from lmcsweep import seeds


class SeededDropout(nn.Module):
    """`nn.Dropout(p)` (inverted: survivors scaled by 1/(1-p)) drawing from `seeds.generator(
    "dropout", *key)`. Outside training, or with p = 0, the identity."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), not {p}")
        self.p = p
        self.key: tuple[int, int] = (0, 0)
        self._draw = _outside_graphs()  # built here, eagerly: torch.compile only calls it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * self._draw(self, x)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _scaled_mask(module: SeededDropout, x: torch.Tensor) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=seeds.generator("dropout", *module.key)) >= module.p
    return keep.to(device=x.device, dtype=x.dtype) / (1 - module.p)


@functools.cache
def _outside_graphs() -> Callable[[SeededDropout, torch.Tensor], torch.Tensor]:
    """`_scaled_mask`, run outside torch.compile's graphs (a generator per step would break the graph
    and recompile it every step). torch._dynamo is imported here, by networks with dropout only."""
    import torch._dynamo

    return torch._dynamo.disable(_scaled_mask)
