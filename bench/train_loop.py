"""Throughput of the project's training path against a minimal plain-PyTorch loop.

Both train LeNet-300-100 on in-memory Fashion-MNIST for the same number of iterations (Adam,
batch 60) and evaluate the test set at the same cadence. The project's path is a real `train`
job run through the Runner with MLflow tracking on a temporary SQLite store (run creation,
metric logging, checkpoints included). The plain loop runs twice: on the project's kernel-thread
count (`train.cpu_threads`, default 1: the like-for-like baseline of the target) and on torch's
default (all cores: what a lone script gets; the gap is the price of thread-count-independent
numbers, see copies.py). Prints the median times and the throughput ratios (project / plain;
target >= 0.9 against the loop on the same kernel threads).

    .venv/bin/python bench/train_loop.py [--iterations 2000] [--repeats 3] [--cpu-threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from _runner import time_plan  # bench/ is on sys.path when a script in it runs
from lmcsweep.run.together import kernel_threads
from lmcsweep.data import load_dataset

SWEEP = """\
name: bench-train
experiment: bench
preset: lenet
data: {{dataset: fashion_mnist}}
train: {{iterations: {iterations}it, batch_size: 60, eval_every: {every}it, cpu_threads: {threads}}}
"""


def project(iterations: int, every: int, threads: int) -> float:
    seconds, outcome = time_plan(SWEEP.format(iterations=iterations, every=every, threads=threads))
    assert not outcome.failed, outcome
    return seconds


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
    ap.add_argument("--cpu-threads", type=int, default=1, help="train.cpu_threads of the project's run")
    args = ap.parse_args()
    every, threads = max(1, args.iterations // 10), args.cpu_threads
    data = load_dataset("fashion_mnist")
    project(50, 25, threads)  # warm up imports, the MLflow schema and data caches
    times: dict[str, list[float]] = {"project": [], "same": [], "default": []}
    for _ in range(args.repeats):  # interleaved, so all see the same machine load
        with kernel_threads(threads):
            times["same"].append(plain(args.iterations, every, data))
        times["default"].append(plain(args.iterations, every, data))
        times["project"].append(project(args.iterations, every, threads))
    q, same, default = (statistics.median(times[k]) for k in ("project", "same", "default"))
    print(f"LeNet, {args.iterations} iterations, batch 60, median of {args.repeats}")
    print(f"  plain PyTorch loop, {threads} kernel thread(s)  : {same:7.2f} s  ({args.iterations / same:7.0f} it/s)")
    print(f"  plain PyTorch loop, {torch.get_num_threads()} kernel threads (default): {default:7.2f} s"
          f"  ({args.iterations / default:7.0f} it/s)")
    print(f"  lmcsweep train job, train.cpu_threads {threads} : {q:7.2f} s  ({args.iterations / q:7.0f} it/s)")
    print(f"  throughput ratio (lmcsweep / plain, same threads): {same / q:.2f}  (target >= 0.90)")
    print(f"  throughput ratio (lmcsweep / plain, default threads): {default / q:.2f}")

if __name__ == "__main__":
    main()
