import pytest
import torch

from lmcsweep.config import PRESETS, load_sweep, resolve
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model
from lmcsweep.train import evaluate, lr_at, make_optimizer, train


def _run(hyper, data, init=0, order=0, aug=0, iterations=40):
    model = build_model("lenet", 10, data.shape, init)
    opt = make_optimizer(model, hyper)
    loader = make_loader(data, "train", hyper.batch_size, order, aug)
    losses = [loss for _, loss in train(model, opt, loader.train_batches(0, iterations), hyper, 0, iterations,
                                        pause_at=range(0, iterations, 10))]
    return model.state_dict(), losses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "s.yaml"
    path.write_text("name: t\nexperiment: t\npreset: lenet\ndata: {dataset: fashion_mnist, subset_train: 1200, "
                    "subset_test: 200}\ntrain: {iterations: 40it}\n")
    return resolve(load_sweep(path)), load_dataset("fashion_mnist", subset_train=1200, subset_test=200)


def test_same_seeds_bit_identical(setup):
    hyper, data = setup
    a, la = _run(hyper, data)
    b, lb = _run(hyper, data)
    assert la == lb
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("which", ["init", "order"])
def test_each_seed_matters(setup, which):
    hyper, data = setup
    a, _ = _run(hyper, data)
    b, _ = _run(hyper, data, **{which: 1})
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_training_learns(setup):
    hyper, data = setup
    model = build_model("lenet", 10, data.shape, 0)
    before = evaluate(model, make_loader(data, "test", 60, 0, 0).eval_batches())["error"]
    state, _ = _run(hyper, data, iterations=40)
    model.load_state_dict(state)
    after = evaluate(model, make_loader(data, "test", 60, 0, 0).eval_batches())["error"]
    assert after < before - 0.3


def _hyper(preset, **changes):
    p = PRESETS[preset]
    base = dict(preset=preset, model=p.model, model_options={}, dataset=p.dataset, augmentation=p.augmentation,
                optimizer=p.optimizer, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                batch_size=p.batch_size, iterations=p.iterations.to_iterations(1251), schedule=p.schedule,
                milestones=tuple(m.to_iterations(1251) for m in p.milestones), gamma=p.gamma, final_lr=p.final_lr,
                warmup=p.warmup.to_iterations(1251), iterations_per_epoch=1251, eval_every=1, checkpoint_every=1)
    base.update(changes)
    from lmcsweep.config import Hyper
    return Hyper(**base)


def test_schedules():
    h = _hyper("resnet20")
    assert lr_at(h, 0) == 0.1 and lr_at(h, 31999) == 0.1
    assert lr_at(h, 32000) == pytest.approx(0.01) and lr_at(h, 48000) == pytest.approx(0.001)
    w = _hyper("resnet20_warmup")
    assert lr_at(w, 0) == pytest.approx(0.03 / 30000) and lr_at(w, 14999) == pytest.approx(0.015)
    assert lr_at(w, 30000) == pytest.approx(0.03)
    r50 = _hyper("resnet50")
    assert r50.warmup == 5 * 1251 and r50.milestones == (30 * 1251, 60 * 1251, 80 * 1251)
    assert lr_at(r50, 5 * 1251) == pytest.approx(0.4) and lr_at(r50, 60 * 1251) == pytest.approx(0.004)
    inc = _hyper("inception_v3")
    assert lr_at(inc, 0) == pytest.approx(0.03)
    assert lr_at(inc, inc.iterations // 2) == pytest.approx((0.03 + 0.005) / 2, rel=1e-3)
    assert lr_at(inc, inc.iterations) == pytest.approx(0.005)
    assert lr_at(_hyper("lenet"), 20000) == 1.2e-3


def test_dropout_masks_come_from_the_noise_seed_not_the_global_generator(setup):
    """A network with dropout (as Inception-v3 has) trains bit-identically whatever torch's global
    generator holds, and differently for another noise seed; a resume at k gives the same weights."""
    from lmcsweep.models.dropout import SeededDropout

    hyper, data = setup

    def run(noise_seed, global_seed, start=0, state=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(),
                                    SeededDropout(0.5), torch.nn.Linear(64, 10))
        opt = make_optimizer(model, hyper)
        if state is not None:
            model.load_state_dict(state[0])
            opt.load_state_dict(state[1])
        torch.manual_seed(global_seed)
        loader = make_loader(data, "train", hyper.batch_size, 0, 0)
        list(train(model, opt, loader.train_batches(start, 20), hyper, start, 20, noise_seed=noise_seed,
                   pause_at=[10]))
        return model.state_dict()

    a, b, c = run(3, global_seed=1), run(3, global_seed=2), run(4, global_seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)

    # from iteration 10 on its own: the same as the 20 iterations in one go
    torch.manual_seed(0)
    first = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(),
                                SeededDropout(0.5), torch.nn.Linear(64, 10))
    opt = make_optimizer(first, hyper)
    loader = make_loader(data, "train", hyper.batch_size, 0, 0)
    list(train(first, opt, loader.train_batches(0, 10), hyper, 0, 10, noise_seed=3))
    resumed = run(3, global_seed=5, start=10, state=(first.state_dict(), opt.state_dict()))
    assert all(torch.equal(a[k], resumed[k]) for k in a)
    assert isinstance(build_model("inception_v3", 10, (3, 75, 75), 0, aux_logits=False).dropout, SeededDropout)


def _lrs(hyper, data, start, end, lr_offset=0):
    """The learning rate of every step of `train` from start to end (read by the optimizer)."""
    model = build_model("lenet", 10, data.shape, 0)
    opt = make_optimizer(model, hyper)
    seen, step = [], opt.step
    opt.step = lambda: (seen.append(opt.param_groups[0]["lr"]), step())[1]
    loader = make_loader(data, "train", hyper.batch_size, 0, 0)
    list(train(model, opt, loader.train_batches(start, end), hyper, start, end, lr_offset=lr_offset))
    return seen


def test_restarted_schedule_reads_the_learning_rate_from_k(setup):
    """instability.schedule: restart: a copy forked at k trains to k + T and its step at iteration
    k + j uses lr_at(j) (warmup and milestones again from 0); without the offset it is lr_at(k + j)."""
    import dataclasses

    hyper, data = setup
    h = dataclasses.replace(hyper, optimizer="sgd", lr=0.05, momentum=0.9, schedule="step", milestones=(20,),
                            warmup=5, iterations=40)
    k = 15
    restarted = _lrs(h, data, k, k + h.iterations, lr_offset=k)
    assert restarted == [lr_at(h, j) for j in range(h.iterations)]
    assert restarted[0] == pytest.approx(0.05 / 5) and restarted[-1] == pytest.approx(0.005)
    continued = _lrs(h, data, k, h.iterations)
    assert continued == [lr_at(h, it) for it in range(k, h.iterations)]
    assert continued != restarted[:len(continued)]


def test_seeded_dropout_under_torch_compile_gives_the_eager_masks_without_recompiling():
    import torch._dynamo
    from torch._dynamo.utils import counters

    from lmcsweep.models.dropout import SeededDropout

    torch._dynamo.reset()
    counters.clear()
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), SeededDropout(0.5), torch.nn.Linear(8, 2)).train()
    compiled = torch.compile(m, backend="eager")
    x = torch.randn(4, 8)
    for it in range(10):  # a new key every step, as in training
        m[1].key = (3, it)
        assert torch.equal(compiled(x), m(x))
    assert counters["stats"]["unique_graphs"] <= 2 and not counters["recompiles"]
    with pytest.raises(ValueError, match="noise_seed"):
        next(train(m, make_optimizer(m, _hyper("lenet")), iter([]), _hyper("lenet"), 0, 1))
