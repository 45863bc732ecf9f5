"""Permutation specs: which axes of which tensors a permutation of hidden units acts on, per network
family, read off the model's own structure.

A network's hidden units can be reordered without changing the function it computes, as long as
every tensor that reads or writes a unit is reordered the same way. A `PermSpec` names one
permutation per group of units that must move together ("hidden0", "conv3", "stage1", ...) and, for
every entry of the state dict, the permutation acting on each of its axes (None: not permuted).

- LeNet: one permutation per hidden layer (rows of its weight and bias, columns of the next weight).
- VGG-16: one per conv layer, shared by the conv's output channels, its bias, its BatchNorm's
  affine parameters and running statistics, and the next conv's (or the output layer's) input channels.
- ResNet (CIFAR): the residual stream of a stage is one permutation, shared by the stem (stage 0),
  every block's second conv and BatchNorm, the projection shortcut that opens the stage, the first
  convs that read it and the output layer; the inner units of each block (conv1, bn1) have their own.
  Option-A shortcuts (zero-padded channels) are not supported.

`points` names, for each permutation, the modules whose outputs carry its units (and whether a ReLU
follows them), which activation matching correlates. No training, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.lenet import LeNet
from ..models.resnet_cifar import ResNetCifar
from ..models.vgg_cifar import VGGCifar

Axes = tuple  # tuple[str | None, ...]: the permutation of each axis of one tensor


class AlignmentError(ValueError):
    """A network that cannot be aligned, or an aligned network that does not compute what it did."""


@dataclass
class PermSpec:
    name: str                                                      # the network family
    axes: dict[str, Axes] = field(default_factory=dict)            # state key -> permutation per axis
    points: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)  # perm -> [(module, relu after)]

    def groups(self) -> dict[str, list[tuple[str, int]]]:
        """Each permutation's (state key, axis) pairs."""
        out: dict[str, list[tuple[str, int]]] = {}
        for key, axes in self.axes.items():
            for axis, perm in enumerate(axes):
                if perm is not None:
                    out.setdefault(perm, []).append((key, axis))
        return out

    def batchnorm(self, prefix: str, perm: str) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.axes[f"{prefix}.{name}"] = (perm,)
        self.axes[f"{prefix}.num_batches_tracked"] = ()


def lenet_spec(model: LeNet) -> PermSpec:
    spec, previous = PermSpec("lenet"), None
    for i in range(len(model.layers)):
        perm = f"hidden{i}"
        spec.axes[f"layers.{i}.weight"] = (perm, previous)
        spec.axes[f"layers.{i}.bias"] = (perm,)
        spec.points[perm] = [(f"layers.{i}", True)]
        previous = perm
    spec.axes["fc.weight"], spec.axes["fc.bias"] = (None, previous), (None,)
    return spec


def vgg_spec(model: VGGCifar) -> PermSpec:
    spec, previous, current, n = PermSpec("vgg16"), None, None, 0
    for i, layer in enumerate(model.layers):
        if isinstance(layer, nn.Conv2d):
            current = f"conv{n}"
            spec.axes[f"layers.{i}.weight"] = (current, previous, None, None)
            spec.axes[f"layers.{i}.bias"] = (current,)
        elif isinstance(layer, nn.BatchNorm2d):
            spec.batchnorm(f"layers.{i}", current)
        elif isinstance(layer, nn.ReLU):
            spec.points[current] = [(f"layers.{i}", False)]
            previous, n = current, n + 1
    spec.axes["fc.weight"], spec.axes["fc.bias"] = (None, previous), (None,)
    return spec


def resnet_spec(model: ResNetCifar) -> PermSpec:
    spec, stage = PermSpec("resnet"), 0
    stream = "stage0"
    spec.axes["conv.weight"] = (stream, None, None, None)
    spec.batchnorm("bn", stream)
    spec.points[stream] = [("bn", True)]
    for j, block in enumerate(model.blocks):
        into = stream
        if block.reshape:
            if block.shortcut_type != "B":
                raise AlignmentError("resnet with option-A shortcuts (zero-padded channels) cannot be aligned; "
                                     "use shortcut 'B' (a projection)")
            stage += 1
            stream = f"stage{stage}"
            spec.axes[f"blocks.{j}.shortcut.0.weight"] = (stream, into, None, None)
            spec.batchnorm(f"blocks.{j}.shortcut.1", stream)
        inner = f"block{j}"
        spec.axes[f"blocks.{j}.conv1.weight"] = (inner, into, None, None)
        spec.batchnorm(f"blocks.{j}.bn1", inner)
        spec.axes[f"blocks.{j}.conv2.weight"] = (stream, inner, None, None)
        spec.batchnorm(f"blocks.{j}.bn2", stream)
        spec.points[inner] = [(f"blocks.{j}.bn1", True)]
        spec.points.setdefault(stream, []).append((f"blocks.{j}", False))
    spec.axes["fc.weight"], spec.axes["fc.bias"] = (None, stream), (None,)
    return spec


FAMILIES = ((LeNet, lenet_spec), (VGGCifar, vgg_spec), (ResNetCifar, resnet_spec))


def permutation_spec(model: nn.Module) -> PermSpec:
    """The permutation spec of `model` (LeNet, CIFAR VGG or CIFAR ResNet)."""
    for cls, build in FAMILIES:
        if isinstance(model, cls):
            return build(model)
    raise AlignmentError(f"alignment supports lenet, vgg16 and resnet20, not {type(model).__name__}")


def check_spec(spec: PermSpec, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The size of each permutation, after checking that `spec` covers exactly the floating tensors of
    `state` with the right number of axes and that each permutation's axes have one size."""
    floating = {k for k, t in state.items() if t.is_floating_point()}
    problems = [f"{k} has no entry" for k in sorted(floating - set(spec.axes))]
    problems += [f"{k} is not in the network" for k in sorted(set(spec.axes) - set(state))]
    sizes: dict[str, int] = {}
    for key, axes in spec.axes.items():
        if key not in state:
            continue
        if axes and len(axes) != state[key].dim():
            problems.append(f"{key} has {state[key].dim()} axes, the spec {len(axes)}")
            continue
        for axis, perm in enumerate(axes):
            if perm is not None and sizes.setdefault(perm, state[key].shape[axis]) != state[key].shape[axis]:
                problems.append(f"{perm} is {sizes[perm]} units but axis {axis} of {key} has {state[key].shape[axis]}")
    if problems:
        raise AlignmentError(f"permutation spec of {spec.name} is wrong: " + "; ".join(problems))
    return sizes
