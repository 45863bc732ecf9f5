"""`--gpus`: the GPUs local workers are placed on, checked before the driver writes anything.

Each item is what CUDA_VISIBLE_DEVICES takes for one GPU: its number as `nvidia-smi` counts them,
or its UUID (`GPU-...`, `MIG-...`). A worker sees only its own GPU (`workers.drive`)."""

from __future__ import annotations

import os


class GpuError(ValueError):
    """--gpus names GPUs this machine does not have (one line: what, and what to do)."""


def parse_gpus(text: str) -> list[str]:
    """The GPUs of `--gpus 0,1,2,3`, each checked: a number or a UUID, no repeats, and (numbers)
    among the GPUs torch sees here."""
    items = [item.strip() for item in text.split(",")]
    for item in items:
        if not (item.isdigit() or item.startswith(("GPU-", "MIG-"))):
            raise GpuError(f"--gpus {text}: {item!r} is not a GPU; give their numbers, e.g. --gpus 0,1,2,3 "
                           "(or their GPU-/MIG- UUIDs)")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise GpuError(f"--gpus {text}: GPU {repeated[0]} is named twice; more workers per GPU: --workers N")
    count = visible_gpus()
    if count == 0:
        raise GpuError(f"--gpus {text}: torch sees no CUDA GPU on this machine; leave out --gpus to run "
                       "the workers on the CPU")
    if "CUDA_VISIBLE_DEVICES" not in os.environ:  # (else torch counts only those, numbered anew)
        missing = [item for item in items if item.isdigit() and int(item) >= count]
        if missing:
            numbers = "0" if count == 1 else f"0-{count - 1}"
            raise GpuError(f"--gpus {text}: this machine has no GPU {missing[0]} (its GPUs: {numbers})")
    return items


def visible_gpus() -> int:
    """How many CUDA GPUs torch sees in this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
