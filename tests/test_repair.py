"""REPAIR (`instability.bn: repair`): the network at alpha 0.5 has every hidden unit's mean and std
equal to the blend of the end networks'; at alpha 0 and 1 it is the end network."""

import pytest
import torch

from lmcsweep.interpolate import interpolate_state, path_curves
from lmcsweep.models import build_model
from lmcsweep.repair import blend, repair, repair_points, unit_stats


@pytest.fixture(autouse=True)
def one_thread():
    """One kernel thread, as jobs run on CPU (`train.cpu_threads`): two threads on a busy 2-core
    machine make these small convolutions ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batches(shape, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(32, *shape, generator=gen), torch.randint(0, 10, (32,), generator=gen)) for _ in range(n)]
    return lambda: iter(data)


def _trained_like(model, batches, seed):
    """A network whose BatchNorm statistics and scales are not the defaults (as after training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    model.train()
    for x, _ in batches():
        model(x)
    model.eval()
    return {k: v.clone() for k, v in model.state_dict().items()}


CASES = [("lenet", (1, 28, 28), {"hidden": [32, 16]}), ("resnet20", (3, 8, 8), {"width": 4}),
         ("vgg16", (3, 32, 32), {"width": 0.0625})]


@pytest.mark.parametrize("name,shape,options", CASES)
def test_repair_matches_the_blended_statistics_and_keeps_the_ends(name, shape, options):
    torch.manual_seed(0)
    batches = _batches(shape)
    a, b = (build_model(name, 10, shape, seed, **options) for seed in (1, 2))
    state_a, state_b = _trained_like(a, batches, 1), _trained_like(b, batches, 2)
    model = build_model(name, 10, shape, 3, **options)
    points = repair_points(model)
    assert points and all("fc" not in p for p in points)  # hidden units only, never the logits
    ends = []
    for state in (state_a, state_b):
        model.load_state_dict(state)
        ends.append(unit_stats(model, batches))
        x = next(batches())[0]
    logits = {}
    for alpha, state in ((1.0, state_a), (0.0, state_b)):
        model.load_state_dict(state)
        logits[alpha] = model(x)
    for alpha in (0.0, 0.5, 1.0):
        model.load_state_dict(interpolate_state(state_a, state_b, alpha))
        plain = unit_stats(model, batches)
        target = blend(ends[0], ends[1], alpha)
        repair(model, target, batches)
        got = unit_stats(model, batches)
        for layer in points:
            assert torch.allclose(got[layer][0], target[layer][0], atol=1e-4), layer
            assert torch.allclose(got[layer][1], target[layer][1], rtol=1e-3, atol=1e-4), layer
        if alpha == 0.5:  # interpolation had lost variance somewhere: repair changed something
            assert any(not torch.allclose(plain[p][1], target[p][1], rtol=1e-2) for p in points)
        else:
            assert torch.allclose(model(x), logits[alpha], rtol=1e-4, atol=1e-4)


def test_repaired_path_is_no_worse_at_its_middle_and_equal_at_its_ends():
    batches = _batches((1, 28, 28), n=3)
    a, b = (build_model("lenet", 10, (1, 28, 28), s, hidden=[32, 16]) for s in (1, 2))
    sa, sb = a.state_dict(), b.state_dict()
    model = build_model("lenet", 10, (1, 28, 28), 3, hidden=[32, 16])
    plain = path_curves(model, sa, sb, [0.0, 0.5, 1.0], {"test": batches}, endpoint_trick=False)["test"]
    fixed = path_curves(model, sa, sb, [0.0, 0.5, 1.0], {"test": batches}, bn="repair", bn_batches=batches)["test"]
    assert fixed["error"][0] == plain["error"][0] and fixed["error"][2] == plain["error"][2]
    assert abs(fixed["loss"][0] - plain["loss"][0]) < 1e-4 and abs(fixed["loss"][2] - plain["loss"][2]) < 1e-4
    assert fixed["loss"][1] != plain["loss"][1]
    with pytest.raises(ValueError, match="needs training batches"):
        path_curves(model, sa, sb, [0.5], {"test": batches}, bn="repair")
