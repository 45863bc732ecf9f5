import copy

import pytest
import torch
import torch.nn.functional as F

from lmcsweep.models import build_model, output_layer_name, prunable_names
from lmcsweep.prune import (apply_masks, density, full_masks, layer_densities, magnitude_prune,
                            mask_gradients, prunable_for, prune_to_density, random_prune, rewind)

CIFAR = (3, 32, 32)


def small_resnet(seed=0):
    return build_model("resnet20", 10, CIFAR, seed, depth=8, width=4)


def weights_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def test_full_masks_and_density():
    m = small_resnet()
    masks = full_masks(m, prunable_names(m))
    assert set(masks) == set(prunable_names(m))
    assert all(mk.dtype == torch.bool and mk.all() for mk in masks.values())
    assert density(masks) == 1.0
    assert set(layer_densities(masks).values()) == {1.0}


def test_magnitude_prune_is_global_and_exact():
    m = small_resnet()
    names = prunable_names(m)
    w = weights_of(m)
    masks = full_masks(m, names)
    total = kept(masks)
    new = magnitude_prune(w, masks, 0.2)
    assert total - kept(new) == round(0.2 * total)
    survivors = torch.cat([w[n][new[n]].abs() for n in names])
    pruned = torch.cat([w[n][~new[n]].abs() for n in names])
    assert survivors.min() >= pruned.max()
    # The pruned set is the global smallest, so layer densities differ (a per-layer rule would give
    # ~0.8 everywhere): the first conv (3 in-channels, large std) loses far fewer than the fc.
    ld = layer_densities(new)
    assert max(ld.values()) - min(ld.values()) > 0.1
    assert masks[names[0]].all()                                  # inputs untouched


def test_levels_nested_and_counts():
    m = small_resnet()
    names = prunable_names(m)
    w = weights_of(m)
    masks = full_masks(m, names)
    for level in range(5):
        # Weights change between levels (as after retraining); pruned ones are ignored.
        w = {n: t + 0.01 * torch.randn(t.shape, generator=torch.Generator().manual_seed(level))
             for n, t in w.items()}
        before = kept(masks)
        new = magnitude_prune(w, masks, 0.2)
        assert before - kept(new) == round(0.2 * before)
        assert all(not (new[n] & ~masks[n]).any() for n in names)   # nested: nothing revives
        surv = torch.cat([w[n][new[n]].abs() for n in names])
        just_pruned = torch.cat([w[n][masks[n] & ~new[n]].abs() for n in names])
        assert surv.min() >= just_pruned.max()
        masks = new
    assert density(masks) == pytest.approx(0.8 ** 5, abs=1e-3)


def test_ties_deterministic():
    w = {"b": torch.ones(4, 3), "a": torch.ones(5)}
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    one = magnitude_prune(w, masks, 0.5)
    two = magnitude_prune(w, dict(reversed(list(masks.items()))), 0.5)
    assert kept(one) == 17 - round(0.5 * 17)
    assert all(torch.equal(one[n], two[n]) for n in w)


def test_exempt_layers_untouched():
    m = small_resnet()
    assert output_layer_name(m) not in prunable_for(m, ["output"])
    first = prunable_names(m)[0]
    names = prunable_for(m, ["output", first])
    assert len(names) == len(prunable_names(m)) - 2
    masks = full_masks(m, names)
    w = weights_of(m)
    # Make the exempt layers the smallest weights of all: they must still not be pruned.
    w["fc.weight"] = w["fc.weight"] * 1e-6
    w[first] = w[first] * 1e-6
    for _ in range(3):
        masks = magnitude_prune(w, masks, 0.5)
    assert "fc.weight" not in masks and first not in masks
    apply_masks(m, masks)
    assert torch.equal(dict(m.named_parameters())["fc.weight"], weights_of(small_resnet())["fc.weight"])
    with pytest.raises(ValueError):
        prunable_for(m, ["fc.bias"])


def _train_steps(model, masks, use_masks, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, *CIFAR, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if use_masks:
            mask_gradients(model, masks)
        opt.step()
        if use_masks:
            apply_masks(model, masks)


@pytest.mark.parametrize("use_masks", [True, False])
def test_pruned_weights_stay_zero_only_with_masking(use_masks):
    m = small_resnet()
    names = prunable_names(m)
    masks = magnitude_prune(weights_of(m), full_masks(m, names), 0.5)
    apply_masks(m, masks)
    params = dict(m.named_parameters())
    assert all((params[n][~masks[n]] == 0).all() for n in names)
    _train_steps(m, masks, use_masks)
    zero = all((params[n][~masks[n]] == 0).all() for n in names)
    assert zero == use_masks           # without masking the pruned weights revive
    if use_masks:
        assert any((params[n][masks[n]] != 0).any() for n in names)


def test_rewind():
    m = small_resnet()
    names = prunable_names(m)
    state_k = copy.deepcopy(m.state_dict())
    _train_steps(m, full_masks(m, names), use_masks=False, steps=2)
    masks = magnitude_prune(weights_of(m), full_masks(m, names), 0.3)
    rewind(m, state_k, masks)
    params = dict(m.named_parameters())
    for n in names:
        assert torch.equal(params[n][masks[n]], state_k[n][masks[n]])
        assert (params[n][~masks[n]] == 0).all()
    assert torch.equal(params["blocks.0.bn1.weight"], state_k["blocks.0.bn1.weight"])
    assert torch.equal(m.state_dict()["bn.running_mean"], state_k["bn.running_mean"])


def test_random_prune_keeps_layer_counts():
    m = small_resnet()
    names = prunable_names(m)
    imp = magnitude_prune(weights_of(m), full_masks(m, names), 0.6)
    rnd = random_prune(imp, seed=3)
    assert all(int(rnd[n].sum()) == int(imp[n].sum()) for n in names)
    assert all(rnd[n].shape == imp[n].shape and rnd[n].dtype == torch.bool for n in names)
    assert any(not torch.equal(rnd[n], imp[n]) for n in names)
    again = random_prune(imp, seed=3)
    other = random_prune(imp, seed=4)
    assert all(torch.equal(rnd[n], again[n]) for n in names)
    assert any(not torch.equal(rnd[n], other[n]) for n in names)


@pytest.mark.parametrize("target", [0.5, 0.168, 0.015])
def test_prune_to_density_one_shot(target):
    m = build_model("lenet", 10, (1, 28, 28), 0)
    names = prunable_names(m)
    w = weights_of(m)
    masks = prune_to_density(w, full_masks(m, names), target)
    total = sum(mk.numel() for mk in masks.values())
    assert abs(kept(masks) - target * total) <= 1
    surv = torch.cat([w[n][masks[n]].abs() for n in names])
    pruned = torch.cat([w[n][~masks[n]].abs() for n in names])
    assert surv.min() >= pruned.max()
    with pytest.raises(ValueError):
        prune_to_density(w, masks, 0.9)      # cannot grow back
