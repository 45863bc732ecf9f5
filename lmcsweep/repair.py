"""REPAIR (Jordan et al., 2022, "REPAIR: REnormalizing Permuted Activations for Interpolation
Repair"): an interpolated network's hidden units lose variance (their pre-activations average
units that are not perfectly correlated). REPAIR gives every hidden unit of the network at alpha
the mean and standard deviation that interpolate, by alpha, those of the two end networks,
measured on a few training batches.

The units corrected (`repair_points`): the outputs of every BatchNorm layer of a network that
has them (VGG-16, ResNet-20; its running statistics are set to what it sees, its scale and shift
to the target std and mean), else the pre-activations of every Linear or Conv2d layer but the
output layer (LeNet: each hidden layer's weights and bias rescaled and shifted). Layers are
corrected in network order, each measured after the ones before it are corrected.

At alpha 0 and 1 the target is the end network's own statistics: the network is left as it is
(up to the float rounding of measuring it, and BatchNorm's eps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .models import output_layer_name

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (mean, std) per unit
DEAD = 1e-6  # a unit whose std is below this is only shifted (scaling a constant blows it up)


def repair_points(model: nn.Module) -> list[str]:
    """The layers whose outputs REPAIR corrects, in network order."""
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        return bns
    output = output_layer_name(model)[:-len(".weight")]  # its logits are not hidden units
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n != output]


@torch.no_grad()
def unit_stats(model: nn.Module, batches: Batches, names: list[str] | None = None,
               inputs: bool = False) -> Stats:
    """Per-unit mean and std (over examples and, for convolutions, positions; float64) of the
    outputs (or with `inputs`, the inputs) of layers `names` (default: `repair_points`), eval mode."""
    names = repair_points(model) if names is None else names
    sums: dict[str, list] = {}

    def hook(name: str):
        def record(module, args, output):
            t = (args[0] if inputs else output).detach().double()
            t = t.transpose(0, 1).flatten(1)  # units first, then every example (and position)
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += t.shape[1]
            s[1] = s[1] + t.sum(1)
            s[2] = s[2] + (t * t).sum(1)
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        model.eval()
        for x, _ in batches():
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (n, s, ss) in sums.items():
        mean = s / n
        out[name] = (mean, (ss / n - mean * mean).clamp_min(0).sqrt())
    return out


def blend(a: Stats, b: Stats, alpha: float) -> Stats:
    """The target of the network at alpha: alpha * a + (1 - alpha) * b, mean and std."""
    return {n: (alpha * a[n][0] + (1 - alpha) * b[n][0], alpha * a[n][1] + (1 - alpha) * b[n][1]) for n in a}


@torch.no_grad()
def repair(model: nn.Module, target: Stats, batches: Batches) -> None:
    """Correct `model` (the network at some alpha) in place so that each layer of `target` has its
    per-unit mean and std, layer after layer."""
    for name in target:
        layer = model.get_submodule(name)
        mean_t, std_t = target[name]
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            # running statistics: what the layer now sees (var - eps: it then divides by exactly the std),
            # scale and shift: the target std (keeping the scale's sign) and mean
            mean, std = unit_stats(model, batches, [name], inputs=True)[name]
            layer.running_mean.copy_(mean.to(layer.running_mean))
            layer.running_var.copy_((std * std - layer.eps).clamp_min(0).to(layer.running_var))
            sign = torch.where(layer.weight < 0, -1.0, 1.0).double()
            layer.weight.copy_((sign * std_t).to(layer.weight))
            layer.bias.copy_(mean_t.to(layer.bias))
            continue
        mean, std = unit_stats(model, batches, [name])[name]
        scale = torch.where(std > DEAD, std_t / std.clamp_min(DEAD), torch.ones_like(std))
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(scale.view(shape).to(layer.weight))
        if layer.bias is None:
            raise ValueError(f"bn: repair shifts the pre-activations of layer {name}: it needs a bias")
        # out' = scale * (out - mean) + mean_t, with out = W x + b
        layer.bias.copy_((scale * (layer.bias.double() - mean) + mean_t).to(layer.bias))
