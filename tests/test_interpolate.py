import torch

from lmcsweep import interpolate as interp
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model
from lmcsweep.train import evaluate


def _nets():
    data = load_dataset("fashion_mnist", subset_train=600, subset_test=500)
    a = build_model("lenet", 10, data.shape, 1)
    b = build_model("lenet", 10, data.shape, 2)
    batches = lambda: make_loader(data, "test", 100, 0, 0).eval_batches(batch_size=128)  # noqa: E731
    return a, b, batches


def test_alphas_evenly_spaced():
    pts = interp.alphas(30)
    assert len(pts) == 30 and pts[0] == 0.0 and pts[-1] == 1.0
    assert max(abs((pts[i + 1] - pts[i]) - 1 / 29) for i in range(29)) < 1e-12


def test_ends_equal_end_networks():
    a, b, batches = _nets()
    curve = interp.error_curve(build_model("lenet", 10, (1, 28, 28), 0), a.state_dict(), b.state_dict(),
                               interp.alphas(5), batches)
    assert curve[-1] == evaluate(a, batches())["error"]
    assert curve[0] == evaluate(b, batches())["error"]


def test_identical_copies_have_zero_instability():
    a, _, batches = _nets()
    curve = interp.error_curve(build_model("lenet", 10, (1, 28, 28), 0), a.state_dict(), a.state_dict(),
                               interp.alphas(7), batches)
    assert len(set(curve)) == 1
    assert interp.barrier(curve)["instability"] == 0.0


def test_barrier():
    r = interp.barrier([0.10, 0.30, 0.50, 0.20, 0.12])
    assert abs(r["instability"] - 0.39) < 1e-12 and r["error_max"] == 0.5 and r["stable"] is False
    assert interp.barrier([0.1, 0.11, 0.1])["stable"] is True


def test_batchnorm_reset_changes_statistics():
    net = build_model("resnet20", 10, (3, 32, 32), 0, depth=8, width=4)
    x = torch.randn(64, 3, 32, 32) * 3 + 1
    interp.reset_batchnorm(net, [(x[:32], None), (x[32:], None)])
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.running_mean.abs().sum() > 0 and not net.training
