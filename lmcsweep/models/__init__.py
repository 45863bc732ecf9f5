"""The networks of the paper, built and initialised from an init seed; which layers are prunable.

Initialisation (all from torch generators, never the global RNG): every parameter ``name`` is filled
from its own generator ``seeds.generator("init", init_seed, name)``, so the same seed gives
bit-identical weights in any process, whatever the order modules are built or visited in.

- lenet, resnet20, vgg16 (as OpenLTH): conv and linear weights Kaiming normal, mode fan_in, ReLU gain
  (std = sqrt(2 / fan_in)), the output layer included.
- resnet50 (as torchvision): conv weights Kaiming normal, mode fan_out, ReLU gain; the fc weight
  Kaiming uniform with a = sqrt(5) (nn.Linear's default).
- inception_v3 (as torchvision): conv and linear weights truncated normal on [-2, 2], std 0.1 (or the
  layer's ``stddev`` attribute: 0.001 for the auxiliary head's fc).
- Everywhere: BatchNorm weight 1, bias 0; every bias 0 (a choice: OpenLTH keeps PyTorch's uniform
  default biases; zero biases keep the init a function of the weights' scheme only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lmcsweep import seeds
from lmcsweep.models.lenet import LeNet
from lmcsweep.models.resnet_cifar import ResNetCifar
from lmcsweep.models.vgg_cifar import VGGCifar

WeightInit = Callable[[nn.Module, torch.Tensor, torch.Generator], None]


def _kaiming_fan_in(module: nn.Module, weight: torch.Tensor, gen: torch.Generator) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu", generator=gen)


def _torchvision_resnet(module: nn.Module, weight: torch.Tensor, gen: torch.Generator) -> None:
    if isinstance(module, nn.Linear):
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    else:
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu", generator=gen)


def _torchvision_inception(module: nn.Module, weight: torch.Tensor, gen: torch.Generator) -> None:
    std = float(getattr(module, "stddev", 0.1))
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0, b=2.0, generator=gen)


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., nn.Module]   # (num_classes, shape, **options) -> uninitialised module
    weight_init: WeightInit           # how conv / linear weights are drawn
    description: str


def _imagenet(name: str) -> Callable[..., nn.Module]:
    """Builders of the torchvision networks, imported on first use (torchvision is slow to import)."""

    def build(*args, **kwargs) -> nn.Module:
        from lmcsweep.models import imagenet

        return getattr(imagenet, name)(*args, **kwargs)

    return build


MODELS: dict[str, ModelSpec] = {
    "lenet": ModelSpec(LeNet, _kaiming_fan_in, "LeNet-300-100 (options: hidden)"),
    "resnet20": ModelSpec(ResNetCifar, _kaiming_fan_in,
                          "CIFAR ResNet, 6n+2 (options: depth=20, width=16, shortcut='B'|'A')"),
    "vgg16": ModelSpec(VGGCifar, _kaiming_fan_in, "CIFAR VGG-16 with BN (options: width, widths)"),
    "resnet50": ModelSpec(_imagenet("resnet50"), _torchvision_resnet, "torchvision ResNet-50"),
    "inception_v3": ModelSpec(_imagenet("InceptionV3"), _torchvision_inception,
                              "torchvision Inception-v3 (options: aux_logits=True)"),
}

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def initialise(model: nn.Module, init_seed: int, weight_init: WeightInit) -> None:
    """Fill every parameter of `model` from generators keyed by (init, init_seed, parameter name)."""
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            for p_name, param in module.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if p_name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                    weight_init(module, param, seeds.generator("init", init_seed, full))
                elif p_name == "weight" and isinstance(module, _NORMS):
                    param.fill_(1.0)
                elif p_name == "bias":
                    param.zero_()
                else:
                    raise TypeError(f"no initialisation rule for parameter {full!r} "
                                    f"of {type(module).__name__}")


def build_model(name: str, num_classes: int, shape: tuple[int, int, int], init_seed: int,
                **options) -> nn.Module:
    """Builds network `name` for inputs of `shape` (C, H, W) and initialises it from `init_seed`.

    See the module docstring for the initialisation. Every model's forward returns logits
    [B, num_classes] in both train and eval mode.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    spec = MODELS[name]
    model = spec.build(num_classes, tuple(shape), **options)
    initialise(model, init_seed, spec.weight_init)
    return model


def prunable_names(model: nn.Module) -> list[str]:
    """Names of conv and linear weight parameters, in model order (no biases, no BatchNorm).

    Modules under a model's ``unprunable_prefixes`` (Inception's never-run auxiliary head) are left out.
    """
    skip = tuple(getattr(model, "unprunable_prefixes", ()))
    names = []
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not f"{mod_name}.".startswith(skip):
            names.append(f"{mod_name}.weight")
    return names


def output_layer_name(model: nn.Module) -> str:
    """Name of the final linear layer's weight: the last prunable Linear in model order."""
    modules = dict(model.named_modules())
    linear = [n for n in prunable_names(model) if isinstance(modules[n[: -len(".weight")]], nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no linear output layer")
    return linear[-1]


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (buffers such as BN running statistics not included)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "ModelSpec", "build_model", "count_parameters", "initialise",
           "output_layer_name", "prunable_names"]
