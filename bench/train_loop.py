"""Throughput of the project's training path against a minimal plain-PyTorch loop.

Both train LeNet-300-100 on in-memory Fashion-MNIST for the same number of iterations (Adam,
batch 60) and evaluate the test set at the same cadence. The project's path is a real `train`
job run through the Runner with MLflow tracking on a temporary SQLite store (run creation,
metric logging, checkpoints included). Prints the median times and the throughput ratio
(project / plain; target >= 0.9).

    .venv/bin/python bench/train_loop.py [--iterations 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmcsweep.config import load_sweep
from lmcsweep.data import load_dataset
from lmcsweep.store import Store
from lmcsweep.sweep.execute import Outcome, Runner
from lmcsweep.sweep.plan import build_plan
from lmcsweep.tracking import Tracker

SWEEP = """\
name: bench-train
experiment: bench
preset: lenet
data: {{dataset: fashion_mnist}}
train: {{iterations: {iterations}it, batch_size: 60, eval_every: {every}it}}
"""


def project(iterations: int, every: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(SWEEP.format(iterations=iterations, every=every))
        sweep = load_sweep(path)
        tracker, store = Tracker(root=Path(tmp) / "store"), Store(Path(tmp) / "store")
        experiment = tracker.experiment(sweep.experiment)
        runner = Runner(tracker, store, progress=False)
        parent = runner.sweep_run(sweep, experiment)
        plan = build_plan(sweep)
        start = time.perf_counter()
        runner.run_plan(plan, experiment, parent, Outcome())
        return time.perf_counter() - start


def plain(iterations: int, every: int, data) -> float:
    start = time.perf_counter()
    torch.manual_seed(0)
    x = data.train_x.float().div(255).sub(data.mean[0]).div(data.std[0]).flatten(1)
    y = data.train_y
    tx = data.test_x.float().div(255).sub(data.mean[0]).div(data.std[0]).flatten(1)
    model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 100),
                                torch.nn.ReLU(), torch.nn.Linear(100, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    perm, pos = torch.randperm(len(x)), 0
    for it in range(1, iterations + 1):
        if pos + 60 > len(x):
            perm, pos = torch.randperm(len(x)), 0
        idx = perm[pos:pos + 60]
        pos += 60
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % every == 0:
            with torch.no_grad():
                model.eval()
                (model(tx).argmax(1) == data.test_y).float().mean().item()
                model.train()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    every = max(1, args.iterations // 10)
    data = load_dataset("fashion_mnist")
    project(50, 25)  # warm up imports, the MLflow schema and data caches
    times_project, times_plain = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        times_plain.append(plain(args.iterations, every, data))
        times_project.append(project(args.iterations, every))
    p, q = statistics.median(times_plain), statistics.median(times_project)
    print(f"LeNet, {args.iterations} iterations, batch 60, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"  plain PyTorch loop : {p:7.2f} s  ({args.iterations / p:7.0f} it/s)")
    print(f"  lmcsweep train job : {q:7.2f} s  ({args.iterations / q:7.0f} it/s)")
    print(f"  throughput ratio (lmcsweep / plain): {p / q:.2f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
