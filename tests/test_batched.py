"""Copies trained together and alphas evaluated together equal the same work done one at a time;
precision / compile / group options are recorded on runs."""

from __future__ import annotations

import copy

import pytest
import torch
from mlflow.tracking import MlflowClient

from lmcsweep import interpolate as interp
from lmcsweep.config import Hyper
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model
from lmcsweep.run.together import together
from lmcsweep.models.stacked import stack
from lmcsweep.train import make_optimizer, train

NETS = {  # name: (options, shape, optimizer, batch)
    "lenet": ({"hidden": (64, 32)}, (1, 28, 28), "adam", 60),
    "resnet20": ({"width": 4, "depth": 8}, (3, 16, 16), "sgd", 16),
    "vgg16": ({"width": 0.0625}, (3, 32, 32), "sgd", 16),
}


def _hyper(optimizer: str, batch: int, iterations: int) -> Hyper:
    return Hyper(preset="t", model="t", model_options={}, dataset="synthetic", augmentation="crop_flip",
                 optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3, momentum=0.9,
                 weight_decay=1e-4, batch_size=batch, iterations=iterations, schedule="step", milestones=(4,),
                 gamma=0.1, final_lr=0.0, warmup=2, iterations_per_epoch=0, eval_every=iterations,
                 checkpoint_every=iterations)


def _data(shape):
    return load_dataset("synthetic", synthetic={"shape": shape, "classes": 10, "train": 256, "test": 64, "seed": 1})


def _setup(name: str, seeds: list[int], iterations: int, masked: bool):
    """Copies starting from one trained-for-a-bit network with an optimizer state, as branches do."""
    options, shape, optimizer, batch = NETS[name]
    data = _data(shape)
    h = _hyper(optimizer, batch, iterations)
    parent = build_model(name, 10, shape, 0, **options)
    opt = make_optimizer(parent, h)
    aug = "crop_flip" if shape[0] == 3 else "none"
    loader = make_loader(data, "train", batch, 0, 0, aug)
    x, y = next(iter(loader.train_batches(0, 1)))
    torch.nn.functional.cross_entropy(parent(x), y).backward()
    opt.step()
    masks = None
    if masked:
        masks = {n: (torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) > 0.5)
                 for n, p in parent.named_parameters() if n.endswith("weight") and p.dim() > 1}
    loaders = {s: make_loader(data, "train", batch, s, s + 100, aug) for s in seeds}
    return parent, opt.state_dict(), h, loaders, masks


def _train(name, seeds, iterations=6, masked=False, start=0, end=None, states=None, workers=None, threads=None,
           kernel=1, processes=True):
    """Train the copies `seeds` together (`copies.together`); each copy's (weights and statistics,
    optimizer state, losses)."""
    parent, opt_state, h, loaders, masks = _setup(name, seeds, iterations, masked)
    end = iterations if end is None else end

    def task(s):
        model = copy.deepcopy(parent)
        optimizer = make_optimizer(model, h)
        if states is not None:
            model.load_state_dict(states[s][0])
        optimizer.load_state_dict(copy.deepcopy(states[s][1] if states is not None else opt_state))
        losses = [loss for _, loss in train(model, optimizer, loaders[s].train_batches(start, end), h, start, end,
                                            range(start, end), masks)]
        return ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(optimizer.state_dict()), losses,
                torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        results = together([lambda s=s: task(s) for s in seeds], workers=workers, threads=kernel,
                           processes=processes)
        assert torch.get_num_threads() == (threads or before)
    finally:
        torch.set_num_threads(before)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return dict(zip(seeds, results))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _same_optimizer(a, b):
    for idx in a["state"]:
        for key, value in a["state"][idx].items():
            other = b["state"][idx][key]
            assert (value is None and other is None) or torch.equal(value, other), (idx, key)


@pytest.mark.parametrize("name,masked", [("lenet", True), ("resnet20", False), ("vgg16", True)])
def test_copy_result_independent_of_group(name, masked):
    """Exactly on CPU: a copy's weights, BatchNorm statistics, optimizer state and losses are the same
    alone, in a group of 2 or of 4, in any position, on one worker thread or on four."""
    alone = {s: _train(name, [s], masked=masked)[s] for s in (11, 12, 13, 14)}
    pair = _train(name, [12, 11], masked=masked)
    four = _train(name, [14, 11, 13, 12], masked=masked, workers=4)
    serial = _train(name, [13, 14], masked=masked, workers=1)
    threaded = _train(name, [11, 14], masked=masked, processes=False)  # where there is no fork
    for group in (pair, four, serial, threaded):
        for s, (state, opt, losses, threads) in group.items():
            assert threads == 1
            _same(alone[s][0], state)
            _same_optimizer(alone[s][1], opt)
            assert alone[s][2] == losses
    assert any(not torch.equal(alone[11][0][k], alone[12][0][k]) for k in alone[11][0])  # own noise
    if name != "lenet":  # BatchNorm: each copy's running statistics its own
        key = next(k for k in alone[11][0] if k.endswith("running_mean"))
        assert not torch.equal(alone[11][0][key], alone[12][0][key])
    if masked:  # pruned weights stay exactly zero in every copy
        _, _, _, _, masks = _setup(name, [11], 6, True)
        for n, m in masks.items():
            assert not four[11][0][n][~m].any()


def test_copy_numbers_do_not_depend_on_the_thread_count():
    """Copies run their kernels on one thread whatever the process's setting (which is restored)."""
    one = _train("lenet", [5, 6], threads=1)
    two = _train("lenet", [5, 6], threads=2)
    for s in (5, 6):
        _same(one[s][0], two[s][0])


def test_copy_resumed_alone_continues_exactly():
    """A copy's state at a resume point, written while it trained in a group, continues alone to the
    same end as the uninterrupted group."""
    full = _train("resnet20", [1, 2, 3])
    half = _train("resnet20", [1, 2, 3], end=3)
    resumed = _train("resnet20", [2], start=3, states={2: half[2][:2]})
    _same(full[2][0], resumed[2][0])
    _same_optimizer(full[2][1], resumed[2][1])


def test_together_keeps_failures_apart():
    """One copy's exception is its own result; the others finish."""
    def bad():
        raise FloatingPointError("diverged")

    out = together([lambda: 1, bad, lambda: 3], workers=2)
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], FloatingPointError)


def test_grouped_convolution_close_to_per_copy():
    """The CUDA layout (one grouped convolution for all copies) computes the same function."""
    options, shape, _, _ = NETS["resnet20"]
    models = [build_model("resnet20", 10, shape, s, **options) for s in range(3)]
    x = torch.randn(3 * 8, *shape)
    a, b = stack(models), stack(models, grouped=True)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def _pair(name):
    options, shape, _, _ = NETS[name]
    ends = []
    for seed in (1, 2):
        m = build_model(name, 10, shape, seed, **options)
        m.train()
        with torch.no_grad():
            m(torch.randn(32, *shape, generator=torch.Generator().manual_seed(seed)))  # move BN statistics
        ends.append({k: v.clone() for k, v in m.state_dict().items()})
    data = _data(shape)
    test = make_loader(data, "test", 32, 0, 0, "none")
    train_loader = make_loader(data, "train", 32, 0, 0, "none")
    return build_model(name, 10, shape, 0, **options), ends, test, train_loader


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("bn", ["interpolate", "reset"])
def test_batched_interpolation_equals_per_alpha(name, bn):
    """All alphas in one pass equal one evaluation per alpha. Without the endpoint trick exactly; with
    it (first layer from the two end networks' outputs) up to float rounding, which may flip the
    argmax of a near-tie: tolerance 2 examples per point (none flip on these nets)."""
    model, (a, b), test, train_loader = _pair(name)
    points = interp.alphas(7)
    splits = {"test": lambda: test.eval_batches(batch_size=20), "train": lambda: train_loader.eval_batches(limit=50)}
    bn_batches = lambda: train_loader.train_batches(0, 3)  # noqa: E731
    reference = {s: interp.error_curve(model, a, b, points, batches, bn=bn, bn_batches=bn_batches)
                 for s, batches in splits.items()}
    exact = interp.error_curves(model, a, b, points, splits, bn=bn, bn_batches=bn_batches, endpoint_trick=False,
                                max_stack=3)
    assert exact == reference
    fast = interp.error_curves(model, a, b, points, splits, bn=bn, bn_batches=bn_batches)
    for split, curve in fast.items():
        n = 64 if split == "test" else 50
        assert max(abs(x - y) for x, y in zip(curve, reference[split])) <= 2 / n
    assert fast == reference


def test_options_recorded_on_runs(cli, write_sweep, store):
    """train.precision / train.compile / train.group are params of the runs, read back from MLflow."""
    path = write_sweep("""\
        name: opts
        experiment: tests
        preset: lenet
        data: {dataset: fashion_mnist, subset_train: 240, subset_test: 120}
        train: {iterations: 8it, batch_size: 60, precision: bf16, compile: false, model: {hidden: [32]}}
        instability: {rewind: [0it], copies: 3, alphas: 3, train_examples: 120}
        """)
    result = cli("run", "--no-progress", path)
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    kinds = {}
    for r in runs:
        kinds.setdefault(r.data.tags["lmcsweep.kind"], []).append(r)
    for r in kinds["train"] + kinds["branch"]:
        assert r.data.params["train.precision"] == "bf16"
        assert r.data.params["train.compile"] == "False"
        assert r.data.params["train.channels_last"] == "False" and r.data.params["data.device"] == "cpu"
    assert [r.data.params["train.group"] for r in kinds["branch"]] == ["3"] * 3
    assert len(kinds["interpolate"]) == 3 and all(r.info.status == "FINISHED" for r in runs)


def test_gpu_bench_tiny_mode_runs():
    """bench/gpu.sh is for a lent GPU machine; its --tiny CPU mode keeps it from rotting."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["bash", str(root / "bench" / "gpu.sh"), "--tiny"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHON": sys.executable}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratios:" in out.stdout and "plain DataLoader loop" in out.stdout
    rates = {line.split("  ")[1].strip(): float(line.split()[-2]) for line in out.stdout.splitlines()
             if line.endswith("images/s")}
    assert len(rates) == 3 and all(r > 0 for r in rates.values()), out.stdout
    copies = [line for line in out.stdout.splitlines() if "copies together" in line or "copies on threads" in line]
    assert len(copies) == 4 and all("x one alone" in line for line in copies), out.stdout


def test_gpu_sweep_check_tiny_mode_passes():
    """bench/gpu_sweep.sh runs a small instability + IMP sweep end to end on a lent GPU and checks
    what it stored; its --tiny CPU mode must pass here (the same checks, a shrunk network)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["bash", str(root / "bench" / "gpu_sweep.sh"), "--tiny"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHON": sys.executable}, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "36 jobs run, 6 reused" in out.stdout and out.stdout.rstrip().endswith("gpu sweep check: ok")


@pytest.mark.parametrize("name", list(NETS))
def test_copy_equals_plain_training_loop(name):
    """A copy trained together is the plain `train` loop on one kernel thread, bit for bit."""
    parent, opt_state, h, loaders, _ = _setup(name, [21, 22], 6, False)
    together_ = _train(name, [21, 22])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s in (21, 22):
            model = copy.deepcopy(parent)
            optimizer = make_optimizer(model, h)
            optimizer.load_state_dict(copy.deepcopy(opt_state))
            for _ in train(model, optimizer, loaders[s].train_batches(0, 6), h, 0, 6):
                pass
            _same(model.state_dict(), together_[s][0])
    finally:
        torch.set_num_threads(before)


def test_copies_on_two_kernel_threads_are_exact_in_any_group():
    """train.cpu_threads 2: a copy's kernels always run on two threads, alone or in a group."""
    alone = _train("lenet", [31], kernel=2)
    for workers in (1, 2):  # one after another, or side by side (oversubscribed here, and still exact)
        pair = _train("lenet", [32, 31], kernel=2, workers=workers)
        _same(alone[31][0], pair[31][0])
        assert alone[31][3] == pair[31][3] == pair[32][3] == 2  # the kernels ran on two threads


def test_replicates_dense_runs_train_together_exactly(write_sweep, store, tmp_path):
    """The dense networks of two replicates train side by side (train.group 2 on their runs) and
    end bit-identical to replicate 0 trained on its own in another store."""
    from click.testing import CliRunner

    from lmcsweep.cli import main

    both = write_sweep(name="reps", replicates=2, filename="both.yaml")
    one = write_sweep(name="reps", replicates=1, filename="one.yaml")
    alone_store = tmp_path / "alone"
    for path, where in ((both, store), (one, alone_store)):
        result = CliRunner().invoke(main, ["--store", str(where), "run", "--no-progress", str(path)])
        assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                              "tags.`lmcsweep.kind` = 'train'")
    assert len(runs) == 2 and all(r.data.params["train.group"] == "2" for r in runs)
    shared = [p.parent.name for p in (alone_store / "checkpoints").glob("train_*/it60.pt")]
    assert len(shared) == 1
    a = torch.load(store / "checkpoints" / shared[0] / "it60.pt", weights_only=False)["model"]
    b = torch.load(alone_store / "checkpoints" / shared[0] / "it60.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_worker_processes_report_exceptions_and_messages():
    """Forked workers: results and exceptions come back in order, messages reach the caller while
    the tasks run, an exception names the worker's traceback, and a worker that dies is reported."""
    import os

    from lmcsweep.run.together import send

    seen = []

    def work(i):
        send(("progress", i))
        if i == 1:
            raise ValueError("bad copy")
        if i == 2:
            os._exit(3)  # dies without a word
        return i * 10

    out = together([lambda i=i: work(i) for i in range(4)], workers=2, on_message=seen.append)
    assert out[0] == 0 and out[3] == 30
    assert isinstance(out[1], ValueError) and "in copy worker process" in "".join(out[1].__notes__)
    assert isinstance(out[2], RuntimeError) and "died" in str(out[2])
    assert ("progress", 0) in seen and ("progress", 1) in seen


def test_worker_processes_take_the_next_task_when_free():
    """A worker takes the next task when it is free, not a fixed share: with one long task first,
    the other worker runs all the short ones."""
    import os
    import time

    def work(i):
        if i == 0:
            time.sleep(1.5)
        return os.getpid()

    pids = together([lambda i=i: work(i) for i in range(5)], workers=2)
    assert len(set(pids)) == 2 and pids[0] not in pids[1:] and len(set(pids[1:])) == 1
