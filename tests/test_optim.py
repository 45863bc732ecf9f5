"""`optim.Fused` against torch.optim's fused SGD and Adam: the same bits, step after step, and
state dicts that load in either direction; and a training process that never imports torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lmcsweep.optim import Fused


def _hyper(kind: str) -> dict:
    return {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3} if kind == "sgd" else {"lr": 2e-3, "weight_decay": 1e-3}


def _ours(params, kind: str, h: dict) -> Fused:
    return Fused(params, kind, **h)


def _torch_optimizer(params, kind: str, h: dict):
    return (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(params, **h, fused=True)


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))


def _steps(model, opt, n: int, seed: int, lrs=(1.0, 0.5, 0.1)) -> None:
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        for group in opt.param_groups:
            group["lr"] = group["lr"] * lrs[i % len(lrs)] if i else group["lr"]
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_bit_identical_to_torch_fused(kind):
    h = _hyper(kind)
    ours, theirs = _net(0), _net(0)
    _steps(ours, _ours(ours.parameters(), kind, h), 7, seed=1)
    _steps(theirs, _torch_optimizer(theirs.parameters(), kind, h), 7, seed=1)
    assert _same(ours, theirs)
    untrained = _net(0)
    assert not _same(ours, untrained)  # it did train


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dicts_load_both_ways(kind, direction):
    """Train 4 steps with one, hand its state dict to the other, train 4 more: the same bits as 8
    steps with torch alone."""
    h = _hyper(kind)
    reference = _net(0)
    ref_opt = _torch_optimizer(reference.parameters(), kind, h)
    _steps(reference, ref_opt, 4, seed=1)
    _steps(reference, ref_opt, 4, seed=2)

    model = _net(0)
    make_first, make_second = ((lambda: _torch_optimizer(model.parameters(), kind, h)),
                               (lambda: _ours(model.parameters(), kind, h)))
    if direction == "ours_to_torch":
        make_first, make_second = make_second, make_first
    first = make_first()
    _steps(model, first, 4, seed=1)
    saved = {"state": {i: {k: v.clone() for k, v in s.items()} for i, s in first.state_dict()["state"].items()},
             "param_groups": first.state_dict()["param_groups"]}
    second = make_second()
    second.load_state_dict(saved)
    _steps(model, second, 4, seed=2)
    assert _same(model, reference)


def test_load_rejects_another_network():
    h = _hyper("sgd")
    small, other = _net(0), torch.nn.Linear(3, 2)
    opt = _ours(small.parameters(), "sgd", h)
    _steps(small, opt, 1, seed=1)
    with pytest.raises(ValueError, match="parameters"):
        _ours(other.parameters(), "sgd", h).load_state_dict(opt.state_dict())


def test_training_never_imports_dynamo():
    """The point of `Fused`: a process that trains with lmcsweep's loop does not pay for
    torch._dynamo's import."""
    code = (
        "import sys, torch\n"
        "from lmcsweep.config import Hyper\n"
        "from lmcsweep.train import make_optimizer, train\n"
        "h = Hyper('lenet', 'lenet', {}, 'synthetic', 'none', 'sgd', 0.1, 0.9, 0.0, 4, 3, 'constant', (), 0.1,\n"
        "          0.0, 0, 10, 3, 3)\n"
        "m = torch.nn.Linear(5, 3)\n"
        "batches = [(torch.randn(4, 5), torch.randint(0, 3, (4,))) for _ in range(3)]\n"
        "list(train(m, make_optimizer(m, h), batches, h, 0, 3))\n"
        "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
