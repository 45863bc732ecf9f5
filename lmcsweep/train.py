"""The training loop, the optimizer and learning-rate schedule, and evaluation.

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


def make_optimizer(model: torch.nn.Module, hyper: Hyper) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, with the preset's weight decay (coupled, as in OpenLTH)."""
    params = list(model.parameters())
    if hyper.optimizer == "adam":
        return torch.optim.Adam(params, lr=hyper.lr, weight_decay=hyper.weight_decay)
    return torch.optim.SGD(params, lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)


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
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    hyper: Hyper,
    start: int,
    end: int,
    pause_at: Iterable[int] = (),
    masks: prune.Masks | None = None,
    device: torch.device = torch.device("cpu"),
) -> Iterator[tuple[int, float]]:
    """Train from iteration `start` to `end`, yielding (iteration, mean training loss since the last
    pause) at each iteration of `pause_at` inside (start, end] and at `end`.

    `batches` yields the batches of iterations start..end-1. With `masks`, pruned weights get no
    gradient (so momentum cannot revive them) and are zeroed again after every step. One network is
    a group of one copy: the loop is `train_group`'s.
    """
    for it, losses in train_group(model, optimizer, [batches], hyper, start, end, pause_at, masks, device):
        yield it, losses[0]


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


def train_group(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[Iterable[tuple[torch.Tensor, torch.Tensor]]],
    hyper: Hyper,
    start: int,
    end: int,
    pause_at: Iterable[int] = (),
    masks: prune.Masks | None = None,
    device: torch.device = torch.device("cpu"),
) -> Iterator[tuple[int, list[float]]]:
    """The training loop, for copies stacked in one module (`models.stacked.stack`) or for one plain
    network (one stream of batches): copy c takes its batches from `batches[c]`; yields
    (iteration, each copy's mean training loss since the last pause) at each iteration of
    `pause_at` inside (start, end] and at `end`.

    The copies share nothing but the computation: each loss is its own copy's mean over its batch,
    and the optimizer's update is elementwise, so a copy's gradients, state and weights are those it
    would have in any other group (masks stacked likewise, all-True for unmasked copies).
    """
    copies = len(batches)
    masks = prune.multipliers(masks) if masks is not None else None
    pauses = sorted({p for p in pause_at if start < p < end} | {end})
    net.train()
    loss_sum, count = torch.zeros(copies, device=device), 0
    it = start
    for pairs in zip(*batches):
        if it >= end:
            break
        x = torch.cat([p[0] for p in pairs]) if copies > 1 else pairs[0][0]
        y = torch.cat([p[1] for p in pairs]) if copies > 1 else pairs[0][1]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(hyper, it)
        with autocast(hyper, device):
            logits = net(x)
        losses = F.cross_entropy(logits.float(), y, reduction="none").view(copies, -1).mean(1)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        if masks is not None:
            prune.mask_gradients(net, masks)
        optimizer.step()
        if masks is not None:
            prune.apply_masks(net, masks)
        loss_sum += losses.detach()
        count += 1
        it += 1
        if it == pauses[0]:
            yield it, (loss_sum / count).tolist()
            loss_sum.zero_()
            count = 0
            pauses.pop(0)
            net.train()
    if it < end:
        raise RuntimeError(f"the data ran out at iteration {it}, before {end}")


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


def stack_optimizer_states(states: list[dict]) -> dict:
    """The state dict of an optimizer over stacked parameters, from the copies' own state dicts
    (torch.optim format); per-weight tensors are stacked, scalars (Adam's step) must agree."""
    first = states[0]
    out: dict = {"param_groups": first["param_groups"], "state": {}}
    for idx, entry in first["state"].items():
        merged = {}
        for key, value in entry.items():
            values = [s["state"][idx][key] for s in states]
            if torch.is_tensor(value) and value.dim() > 0:
                merged[key] = torch.stack(values)
            elif value is None or all(torch.equal(torch.as_tensor(v), torch.as_tensor(value)) for v in values):
                merged[key] = value.clone() if torch.is_tensor(value) else value
            else:
                raise ValueError(f"copies disagree on optimizer state {key!r}; they cannot share a group")
        out["state"][idx] = merged
    return out


def copy_optimizer_state(state: dict, c: int) -> dict:
    """Copy c's optimizer state dict (torch.optim format) from a stacked optimizer's state dict."""
    return {"param_groups": state["param_groups"],
            "state": {idx: {k: (v[c].clone() if torch.is_tensor(v) and v.dim() > 0 else
                                (v.clone() if torch.is_tensor(v) else v)) for k, v in entry.items()}
                      for idx, entry in state["state"].items()}}
