"""The training loop, the learning-rate schedule, and evaluation.

No file I/O and no tracking here: `train` is a generator that pauses at the iterations its caller
asks for (rewind points, evaluation and checkpoint cadence) so the caller can save and log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from . import prune
from .config import Hyper
from .models.dropout import SeededDropout
from .optim import Fused


def make_optimizer(model: torch.nn.Module, hyper: Hyper) -> Fused:
    """SGD with momentum or Adam, with the preset's weight decay (coupled, as in OpenLTH): the fused
    kernels of torch.optim's fused=True, one call a step for all parameters (`optim.Fused`)."""
    return Fused(model.parameters(), hyper.optimizer, hyper.lr, hyper.momentum, hyper.weight_decay)


def lr_at(hyper: Hyper, iteration: int) -> float:
    """The learning rate used for the step that starts at `iteration` (0-based).

    Linear warmup from 0 over `warmup` iterations, multiplied by the schedule: `step` divides by
    1/gamma at each milestone, `linear` decays linearly from lr to `final_lr` at the end.
    """
    if hyper.schedule == "step":
        lr = hyper.lr * hyper.gamma ** sum(iteration >= m for m in hyper.milestones)
    elif hyper.schedule == "linear":
        frac = min(1.0, iteration / max(1, hyper.iterations))
        lr = hyper.lr + (hyper.final_lr - hyper.lr) * frac
    else:
        lr = hyper.lr
    if hyper.warmup and iteration < hyper.warmup:
        lr *= (iteration + 1) / hyper.warmup
    return lr


def autocast(hyper: Hyper, device: torch.device):
    """bf16 autocast when asked for (GPU), else nothing: fp32 results are never touched."""
    if hyper.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(
    model: torch.nn.Module,
    optimizer: Fused,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    hyper: Hyper,
    start: int,
    end: int,
    pause_at: Iterable[int] = (),
    masks: prune.Masks | None = None,
    device: torch.device = torch.device("cpu"),
    noise_seed: int | None = None,
    lr_offset: int = 0,
    windows: Iterable[int] | None = None,
) -> Iterator[tuple[int, float | None]]:
    """Train from iteration `start` to `end`, yielding (iteration, mean training loss) at each
    iteration of `pause_at` inside (start, end] and at `end`. The mean is over the window since the
    last iteration of `windows` (default: the pauses) and is None at a pause that closes none, so a
    pause that only saves a checkpoint (a rewind point) leaves the loss curve as it is.

    `batches` yields the batches of iterations start..end-1. The step at iteration `it` uses the
    learning rate `lr_at(hyper, it - lr_offset)` (`lr_offset` = k: a copy whose schedule restarts
    at k). With `masks`, pruned weights get no gradient (so momentum cannot revive them) and are
    zeroed again after every step. Copies of a network train together by running this loop side
    by side (`run.together`). Dropout masks (`SeededDropout`) are drawn from (`noise_seed`,
    iteration): the job passes its augmentation seed.
    """
    masks = prune.multipliers(masks) if masks is not None else None
    dropouts = [m for m in model.modules() if isinstance(m, SeededDropout)]
    if dropouts and noise_seed is None:
        raise ValueError("a network with dropout trains with a noise_seed (the job's augmentation seed)")
    pauses = sorted({p for p in pause_at if start < p < end} | {end})
    windows = set(pauses) if windows is None else set(windows) | {end}
    model.train()
    loss_sum, count = torch.zeros((), device=device), 0
    it = start
    for x, y in batches:
        if it >= end:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(hyper, it - lr_offset)
        for m in dropouts:
            m.key = (noise_seed, it)
        with autocast(hyper, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if masks is not None:
            prune.mask_gradients(model, masks)
        optimizer.step()
        if masks is not None:
            prune.apply_masks(model, masks)
        loss_sum += loss.detach()
        count += 1
        it += 1
        if it == pauses[0]:
            pauses.pop(0)
            if it in windows:
                yield it, (loss_sum / count).item()
                loss_sum.zero_()
                count = 0
            else:
                yield it, None
            model.train()
    if it < end:
        raise RuntimeError(f"the data ran out at iteration {it}, before {end}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Classification error, accuracy and mean loss of `model` over `batches` (eval mode)."""
    model.eval()
    wrong = torch.zeros((), dtype=torch.long)
    loss = torch.zeros((), dtype=torch.float64)
    n = 0
    for x, y in batches:
        logits = model(x).float()
        wrong += (logits.argmax(1) != y).sum().cpu()
        loss += F.cross_entropy(logits, y, reduction="sum").double().cpu()
        n += len(y)
    error = wrong.item() / max(1, n)
    return {"error": error, "accuracy": 1.0 - error, "loss": loss.item() / max(1, n), "examples": n}


@torch.no_grad()
def evaluate_group(net: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   shared: bool = False) -> list[dict[str, float]]:
    """`evaluate` for every copy of a stacked module on the same batches. With `shared` the module
    takes each batch once (its first layer is in shared-input mode); else the batch is repeated."""
    net.eval()
    copies = net.copies
    wrong = torch.zeros(copies, dtype=torch.long)
    loss = torch.zeros(copies, dtype=torch.float64)
    n = 0
    for x, y in batches:
        inputs = x if shared else x.repeat(copies, *([1] * (x.dim() - 1)))
        logits = net(inputs).float().view(copies, len(y), -1)
        wrong += (logits.argmax(2) != y).sum(1).cpu()
        loss += F.cross_entropy(logits.flatten(0, 1), y.repeat(copies), reduction="none"
                                ).view(copies, -1).double().sum(1).cpu()
        n += len(y)
    out = []
    for c in range(copies):
        error = wrong[c].item() / max(1, n)
        out.append({"error": error, "accuracy": 1.0 - error, "loss": loss[c].item() / max(1, n), "examples": n})
    return out
