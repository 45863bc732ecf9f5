"""Permutation alignment (`lmcsweep.align`): on LeNet, VGG-16 (BatchNorm) and ResNet-20 (residual
streams, projection shortcuts), briefly trained on the synthetic data set, a permuted network
computes what it did, weight and activation
matching undo a known permutation, and a wrong permutation spec is caught by the output check."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from lmcsweep.align import AlignmentError, align, checked, permutation_spec, permute
from lmcsweep.align.spec import check_spec
from lmcsweep.data.datasets import make_synthetic
from lmcsweep.models import build_model

NETS = {"lenet": ((1, 28, 28), {"hidden": [40, 20]}), "vgg16": ((3, 16, 16), {"width": 0.125}),
        "resnet20": ((3, 16, 16), {"width": 4})}


@functools.cache
def _net(name: str, seed: int):
    """`name` from init seed `seed`, trained 5 SGD steps on the synthetic data set (so its BatchNorm
    running statistics are not the defaults and must move with their channels); its state, a batch."""
    shape, options = NETS[name]
    data = make_synthetic(shape=shape, train=16, test=1)
    x = (data.train_x.float() / 255 - 0.5) / 0.25
    model = build_model(name, 10, shape, seed, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), data.train_y).backward()
        opt.step()
    model.eval()
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}, x


def _random_perms(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {p: torch.randperm(n, generator=gen) for p, n in sizes.items()}


@pytest.mark.parametrize("name", list(NETS))
def test_permuted_network_computes_the_same(name):
    model, state, x = _net(name, 0)
    spec = permutation_spec(model)
    perms = _random_perms(check_spec(spec, state))
    permuted = permute(spec, state, perms)
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    diff, tol = checked(spec, model, state, permuted, x)
    assert diff <= tol
    # both methods undo a known permutation (weights exactly: it is the unique optimum)
    for method in ("weights", "activations"):
        aligned, info = align(model, state, permuted, method, [x], seed=0)
        assert info["check_difference"] <= info["check_tolerance"]
        same = [torch.equal(aligned[k], state[k]) for k in state if state[k].is_floating_point()]
        if method == "weights":
            assert all(same), name
        else:  # (a unit that is never active on the batch correlates with nothing: it may land elsewhere)
            unit = [float((aligned[k] == state[k]).double().mean()) for k in state if state[k].is_floating_point()]
            assert sum(unit) / len(unit) > 0.9, (name, sum(unit) / len(unit))
    # two networks from different seeds: units move and the function is kept
    other, state_b, _ = _net(name, 1)
    aligned, info = align(model, state, state_b, "weights", [x], seed=0)
    assert info["moved"] > 0.5 and info["rounds"] >= 2
    a = torch.cat([t.flatten() for k, t in state.items() if t.is_floating_point()])
    before = torch.cat([t.flatten() for k, t in state_b.items() if t.is_floating_point()])
    after = torch.cat([t.flatten() for k, t in aligned.items() if t.is_floating_point()])
    assert (a - after).norm() < (a - before).norm()  # weight matching brings B closer to A


def _rename(spec, keys, old, new):
    axes = dict(spec.axes)
    for k in keys:
        axes[k] = tuple(new if p == old else p for p in axes[k])
    return dataclasses.replace(spec, axes=axes)


def test_wrong_specs_are_caught():
    # ResNet: each block of a stage given its own stream permutation (the classic mistake: the
    # residual stream of a stage must share one)
    model, state, x = _net("resnet20", 0)
    spec = permutation_spec(model)
    wrong = _rename(spec, ["blocks.1.conv2.weight", "blocks.1.bn2.weight", "blocks.1.bn2.bias",
                           "blocks.1.bn2.running_mean", "blocks.1.bn2.running_var"], "stage0", "stage0_block1")
    perms = _random_perms(check_spec(wrong, state))
    with pytest.raises(AlignmentError, match="resnet does not preserve the function"):
        checked(wrong, model, state, permute(wrong, state, perms), x)
    with pytest.raises(AlignmentError, match="resnet"):
        align(model, state, _net("resnet20", 1)[1], "weights", [x], spec=wrong)
    # VGG: BatchNorm statistics left where they were
    model, state, x = _net("vgg16", 0)
    spec = permutation_spec(model)
    wrong = dataclasses.replace(spec, axes={**spec.axes, "layers.1.running_mean": (None,),
                                            "layers.1.running_var": (None,)})
    with pytest.raises(AlignmentError, match="vgg16 does not preserve"):
        checked(wrong, model, state, permute(wrong, state, _random_perms(check_spec(wrong, state))), x)
    # LeNet: the output layer's inputs not permuted
    model, state, x = _net("lenet", 0)
    spec = permutation_spec(model)
    wrong = dataclasses.replace(spec, axes={**spec.axes, "fc.weight": (None, None)})
    with pytest.raises(AlignmentError, match="lenet does not preserve"):
        checked(wrong, model, state, permute(wrong, state, _random_perms(check_spec(wrong, state))), x)
    # a spec that misses a tensor, or whose sizes disagree, is refused before anything is matched
    missing = dataclasses.replace(spec, axes={k: v for k, v in spec.axes.items() if k != "layers.0.bias"})
    with pytest.raises(AlignmentError, match="layers.0.bias has no entry"):
        check_spec(missing, state)
    sizes = dataclasses.replace(spec, axes={**spec.axes, "layers.1.weight": ("hidden1", "hidden1")})
    with pytest.raises(AlignmentError, match="hidden1 is 20 units but axis 1 of layers.1.weight has 40"):
        check_spec(sizes, state)


def test_option_a_shortcuts_refused():
    model = build_model("resnet20", 10, (3, 32, 32), 0, width=4, shortcut="A")
    with pytest.raises(AlignmentError, match="option-A"):
        permutation_spec(model)
