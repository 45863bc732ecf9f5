import pytest
import torch
from torch import nn

from lmcsweep.models import (MODELS, build_model, count_parameters, output_layer_name,
                             prunable_names)

CIFAR = (3, 32, 32)


def test_lenet_count_and_forward():
    m = build_model("lenet", 10, (1, 28, 28), init_seed=0)
    assert count_parameters(m) == 266_610
    assert m(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert prunable_names(m) == ["layers.0.weight", "layers.1.weight", "fc.weight"]
    assert output_layer_name(m) == "fc.weight"


def test_resnet20_counts():
    # Option B (1x1 conv + BN projection, OpenLTH, the default) and option A (zero padding).
    assert count_parameters(build_model("resnet20", 10, CIFAR, 0)) == 272_474
    assert count_parameters(build_model("resnet20", 10, CIFAR, 0, shortcut="A")) == 269_722


def test_vgg16_count():
    n = count_parameters(build_model("vgg16", 10, CIFAR, 0))
    assert abs(n - 14.7e6) < 0.1e6


def test_resnet50_count_and_forward():
    m = build_model("resnet50", 1000, (3, 224, 224), 0)
    assert abs(count_parameters(m) - 25.5e6) < 0.1e6
    m.train()
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_inception_v3_count_and_forward():
    m = build_model("inception_v3", 1000, (3, 299, 299), 0)
    assert abs(count_parameters(m) - 27.1e6) < 0.1e6          # paper's count: with the aux head
    assert abs(count_parameters(build_model("inception_v3", 1000, (3, 299, 299), 0,
                                            aux_logits=False)) - 23.8e6) < 0.1e6
    assert not any(n.startswith("AuxLogits") for n in prunable_names(m))
    assert output_layer_name(m) == "fc.weight"
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        m.train()
        out_train = m(x)
        m.eval()
        out_eval = m(x[:1])
    assert isinstance(out_train, torch.Tensor) and out_train.shape == (2, 1000)
    assert out_eval.shape == (1, 1000)


@pytest.mark.parametrize("name,options", [
    ("lenet", {}), ("resnet20", {"depth": 8, "width": 4}), ("vgg16", {"width": 0.125}),
])
def test_same_seed_identical_different_seed_differs(name, options):
    shape = (1, 28, 28) if name == "lenet" else CIFAR
    a = build_model(name, 10, shape, 7, **options).state_dict()
    torch.manual_seed(123)          # the global RNG must not matter
    b = build_model(name, 10, shape, 7, **options).state_dict()
    torch.manual_seed(456)
    c = build_model(name, 10, shape, 8, **options).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert all(not torch.equal(a[k], c[k]) for k in weights)


def test_imagenet_init_is_seeded():
    a = build_model("resnet50", 10, (3, 64, 64), 1).state_dict()
    torch.manual_seed(99)
    b = build_model("resnet50", 10, (3, 64, 64), 1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model("resnet50", 10, (3, 64, 64), 2).state_dict()
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_init_scheme_cifar():
    m = build_model("vgg16", 10, CIFAR, 0)
    w = m.layers[10].weight           # a 128->128 3x3 conv: fan_in 1152
    assert w.std().item() == pytest.approx((2 / 1152) ** 0.5, rel=0.05)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
            assert torch.all(mod.bias == 0)


@pytest.mark.parametrize("name,options", [
    ("resnet20", {"depth": 8, "width": 4}), ("resnet20", {"depth": 8, "width": 4, "shortcut": "A"}),
    ("vgg16", {"width": 0.125}), ("resnet20", {}),
])
def test_cifar_forward_train_and_eval(name, options):
    m = build_model(name, 10, CIFAR, 0, **options)
    x = torch.randn(3, *CIFAR)
    m.train()
    assert m(x).shape == (3, 10)
    m.eval()
    assert m(x.to(memory_format=torch.channels_last)).shape == (3, 10)
    m.to(memory_format=torch.channels_last)
    assert m(x.to(memory_format=torch.channels_last)).shape == (3, 10)


def test_prunable_names_only_conv_linear_weights():
    for name, shape, opts in [("resnet20", CIFAR, {"depth": 8, "width": 4}),
                              ("vgg16", CIFAR, {"width": 0.125}), ("lenet", (1, 28, 28), {})]:
        m = build_model(name, 10, shape, 0, **opts)
        names = prunable_names(m)
        params = dict(m.named_parameters())
        modules = dict(m.named_modules())
        assert names and all(n.endswith(".weight") for n in names)
        assert all(isinstance(modules[n[:-7]], (nn.Conv2d, nn.Linear)) for n in names)
        order = [n for n in params if n in set(names)]
        assert names == order                                    # model order
        bn = [n for n, mod in modules.items() if isinstance(mod, nn.BatchNorm2d)]
        assert all(not n.startswith(b + ".") for n in names for b in bn)
        assert output_layer_name(m) == "fc.weight"


def test_unknown_model_and_bad_depth():
    assert set(MODELS) == {"lenet", "resnet20", "vgg16", "resnet50", "inception_v3"}
    with pytest.raises(KeyError):
        build_model("resnet18", 10, CIFAR, 0)
    with pytest.raises(ValueError):
        build_model("resnet20", 10, CIFAR, 0, depth=21)
