"""Seeds: the three sources of randomness (init, data_order, augmentation) and how they are keyed.

Dropout masks (`models.dropout`) draw from the augmentation seed, as a stream of its own
(``generator("dropout", seed, iteration)``).

Every random draw in lmcsweep comes from a `torch.Generator` whose seed is derived by hashing a
tuple of parts, e.g. ``generator("data_order", seed, epoch)``. Hashing (rather than ``seed + epoch``)
means that seeds s and s+1 never replay each other's draws one epoch apart.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED_KINDS = ("init", "data_order", "augmentation")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across processes and machines."""
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `derive_seed(*parts)`."""
    import torch  # here, so that planning (which derives seeds) does not load torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen
