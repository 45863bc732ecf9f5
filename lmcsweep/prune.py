"""Masks, global magnitude pruning, the random-pruning control, and rewinding.

Pure functions: no file I/O, no tracking. A mask is a bool tensor of its parameter's shape (True = kept).
"""

from __future__ import annotations

import torch
from torch import nn

from lmcsweep import seeds
from lmcsweep.models import output_layer_name, prunable_names

Masks = dict[str, torch.Tensor]


def prunable_for(model: nn.Module, exempt: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`prunable_names(model)` minus the exempt ones; an item is 'output' (the output layer's weight)
    or an exact parameter name, which must be prunable."""
    names = prunable_names(model)
    drop = set()
    for item in exempt:
        name = output_layer_name(model) if item == "output" else item
        if name not in names:
            raise ValueError(f"exempt layer {item!r} is not a prunable parameter of the model")
        drop.add(name)
    return [n for n in names if n not in drop]


def full_masks(model: nn.Module, names: list[str]) -> Masks:
    """All-True masks for the named parameters, on their devices."""
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}


def density(masks: Masks) -> float:
    """Kept weights / total weights over all masks."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 1.0


def layer_densities(masks: Masks) -> dict[str, float]:
    return {n: int(m.sum()) / m.numel() for n, m in masks.items()}


def _remove_smallest(weights: dict[str, torch.Tensor], masks: Masks, count: int) -> Masks:
    """Removes the `count` surviving weights of smallest |w| across all masked layers.

    Ties are broken by position: layers in sorted-name order, then flat index.
    """
    names = sorted(masks)
    if count <= 0:
        return {n: masks[n].clone() for n in masks}
    device = weights[names[0]].device
    keep = torch.cat([masks[n].to(device).flatten() for n in names])
    if count > int(keep.sum()):
        raise ValueError(f"cannot prune {count} weights: only {int(keep.sum())} remain")
    # |w| of survivors; already-pruned positions get +inf so they are never chosen again.
    values = torch.cat([weights[n].detach().flatten().abs().float() for n in names])
    values.masked_fill_(~keep, float("inf"))
    # The count-th smallest value is the threshold: prune everything below it, then the first of the
    # weights equal to it (in position order) until `count` are pruned. Linear time, no full sort.
    threshold = torch.kthvalue(values, count).values
    prune = values < threshold
    tied = (values == threshold).nonzero().squeeze(1)
    prune[tied[: count - int(prune.sum())]] = True
    keep &= ~prune
    pieces = torch.split(keep, [masks[n].numel() for n in names])
    new = {n: piece.view(masks[n].shape).to(masks[n].device) for n, piece in zip(names, pieces)}
    return {n: new[n] for n in masks}


def magnitude_prune(weights: dict[str, torch.Tensor], masks: Masks, fraction: float) -> Masks:
    """Global magnitude pruning: removes round(fraction * remaining) of the currently surviving weights,
    those of smallest |w| across all masked layers; ties broken deterministically (layer name, index).
    Every survivor has |w| >= every pruned weight. Returns new masks; the inputs are not changed."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    remaining = sum(int(m.sum()) for m in masks.values())
    return _remove_smallest(weights, masks, round(fraction * remaining))


def prune_to_density(weights: dict[str, torch.Tensor], masks: Masks, target_density: float) -> Masks:
    """One-shot global magnitude pruning down to round(target_density * total) kept weights."""
    total = sum(m.numel() for m in masks.values())
    remaining = sum(int(m.sum()) for m in masks.values())
    target = round(target_density * total)
    if not 0.0 <= target_density <= 1.0 or target > remaining:
        raise ValueError(f"target density {target_density} is not in [0, current density "
                         f"{remaining / total:.6f}]")
    return _remove_smallest(weights, masks, remaining - target)


def random_prune(masks: Masks, seed: int) -> Masks:
    """A random mask keeping, in each layer, exactly as many weights as `masks` does; the positions
    come from seeds.generator('random_prune', seed, name)."""
    out = {}
    for n, m in masks.items():
        kept = int(m.sum())
        perm = torch.randperm(m.numel(), generator=seeds.generator("random_prune", seed, n))
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[perm[:kept]] = True
        out[n] = flat.view(m.shape).to(m.device)
    return out


def multipliers(masks: Masks) -> Masks:
    """The masks as float 0/1 tensors, for a training loop: `apply_masks` and `mask_gradients`
    multiply by them, many times cheaper on CPU than `masked_fill_` with a bool mask (pruned entries
    become +-0.0, still exactly zero)."""
    return {n: m.to(torch.float32) for n, m in masks.items()}


def _zero_pruned(t: torch.Tensor, m: torch.Tensor) -> None:
    if m.dtype == torch.bool:
        t.masked_fill_(~m.to(t.device), 0.0)
    else:
        t.mul_(m.to(t.device))


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Sets pruned weights to exactly zero, in place (bool masks or their `multipliers`)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            _zero_pruned(params[n], m)


def mask_gradients(model: nn.Module, masks: Masks) -> None:
    """Zeros the gradients of pruned weights (call after backward, before the optimizer step)."""
    params = dict(model.named_parameters())
    for n, m in masks.items():
        grad = params[n].grad
        if grad is not None:
            _zero_pruned(grad, m)


def rewind(model: nn.Module, state_at_k: dict[str, torch.Tensor], masks: Masks,
           strict: bool = True) -> None:
    """Loads W_k (a state dict, BN buffers included) into `model`, then applies the masks."""
    model.load_state_dict(state_at_k, strict=strict)
    apply_masks(model, masks)
