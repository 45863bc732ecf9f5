"""Wall time of IMP with rewinding: the project's path against a minimal plain-PyTorch script.

The same procedure both ways, on LeNet-300-100 and in-memory Fashion-MNIST (Adam, batch 60):
the dense network trained from init to T (keeping W_k), then levels 0..L, each training m ⊙ W_k
from k to T with fresh data order and pruning 20% of the surviving weights globally by magnitude
(gradients masked and weights re-masked after every step; optimizer state at k continued, masked).
The test set is evaluated at the end of every training in both, and both read the data set from
disk inside the timed region (the project's Runner loads it when a plan starts).

The project's path is a real sweep (`imp` section) run through the Runner with MLflow tracking on a
temporary SQLite store: plan, run creation and params, masks and checkpoints written, metrics logged,
matching not included (it is a read-back). The MLflow schema is created before the clock starts.
Both sides run interleaved in one process; prints the medians and the ratio plain / project
(the project's speed relative to the plain script; target >= 0.85 against the script on the
project's kernel-thread count, `train.cpu_threads`, default 1; the ratio against the script on
torch's default thread count is printed beside it).

    .venv/bin/python bench/imp.py [--levels 3] [--iterations 400] [--rewind 100] [--repeats 3] [--cpu-threads 1]
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
name: bench-imp
experiment: bench
preset: lenet
data: {{dataset: fashion_mnist}}
train: {{iterations: {T}it, batch_size: 60, eval_every: {T}it, cpu_threads: {threads}}}
imp: {{levels: {levels}, rewind: [{k}it]}}
"""


def project(levels: int, T: int, k: int, threads: int) -> float:
    seconds, outcome = time_plan(SWEEP.format(levels=levels, T=T, k=k, threads=threads))
    assert not outcome.failed and len(outcome.computed) == 1 + 2 * (levels + 1), outcome
    return seconds


def plain(levels: int, T: int, k: int) -> float:
    """IMP with rewinding to k in a few lines of PyTorch (reading its data, as the project does)."""
    start = time.perf_counter()
    data = load_dataset("fashion_mnist")
    mean, std = data.mean[0], data.std[0]
    x = data.train_x.float().div(255).sub(mean).div(std).flatten(1)
    tx = data.test_x.float().div(255).sub(mean).div(std).flatten(1)
    y, ty = data.train_y, data.test_y

    def batches(seed: int, start: int, end: int):
        gen = torch.Generator().manual_seed(seed)
        n = len(x) // 60
        perms = {}
        for it in range(start, end):
            epoch, b = divmod(it, n)
            if epoch not in perms:
                perms = {epoch: torch.randperm(len(x), generator=gen)}
            idx = perms[epoch][b * 60:(b + 1) * 60]
            yield x[idx], y[idx]

    def fit(model, opt, seed, start, end, masks=None, at_k=None):
        for it, (xb, yb) in enumerate(batches(seed, start, end), start):
            if at_k is not None and it == k:
                at_k.update(model=_copy(model.state_dict()), opt=_copy(opt.state_dict()))
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if masks:
                for p, m in zip(model.parameters(), masks):
                    if m is not None:
                        p.grad.mul_(m)
            opt.step()
            if masks:
                with torch.no_grad():
                    for p, m in zip(model.parameters(), masks):
                        if m is not None:
                            p.mul_(m)
        with torch.no_grad():
            return (model(tx).argmax(1) == ty).float().mean().item()

    def lenet():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                                   torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))

    torch.manual_seed(0)
    model = lenet()
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    at_k: dict = {}
    fit(model, opt, 0, 0, T, at_k=at_k)                      # the dense network, W_k kept
    masks = [torch.ones_like(p) if p.dim() > 1 else None for p in model.parameters()]
    for level in range(levels + 1):
        model.load_state_dict(at_k["model"])                 # rewind to W_k ...
        opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
        opt.load_state_dict(at_k["opt"])
        with torch.no_grad():
            for p, m in zip(model.parameters(), masks):
                if m is not None:
                    p.mul_(m)                                # ... under the mask
                    for v in opt.state[p].values():
                        if v.shape == m.shape:
                            v.mul_(m)
        fit(model, opt, 1 + level, k, T, masks)              # fresh data order per level
        weights = torch.cat([p.detach().abs()[m.bool()] for p, m in zip(model.parameters(), masks) if m is not None])
        count = round(0.2 * len(weights))
        threshold = torch.kthvalue(weights, count).values
        masks = [None if m is None else m * (p.detach().abs() > threshold) for p, m in zip(model.parameters(), masks)]
    return time.perf_counter() - start


def _copy(state):
    return {key: (_copy(v) if isinstance(v, dict) else v.clone() if torch.is_tensor(v) else v)
            for key, v in state.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, default=3, help="IMP levels after the dense level 0")
    ap.add_argument("--iterations", type=int, default=400, help="T, the end of every training")
    ap.add_argument("--rewind", type=int, default=100, help="k, the rewind point")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-threads", type=int, default=1, help="train.cpu_threads of the project's run")
    args = ap.parse_args()
    L, T, k, threads = args.levels, args.iterations, args.rewind, args.cpu_threads
    project(1, 40, 10, threads)  # warm up: imports, MLflow schema code paths, data caches
    times: dict[str, list[float]] = {"project": [], "same": [], "default": []}
    for _ in range(args.repeats):  # interleaved, so all see the same machine load
        with kernel_threads(threads):
            times["same"].append(plain(L, T, k))
        times["default"].append(plain(L, T, k))
        times["project"].append(project(L, T, k, threads))
    q, same, default = (statistics.median(times[key]) for key in ("project", "same", "default"))
    work = T + (L + 1) * (T - k)
    print(f"IMP, LeNet, levels 0..{L}, T={T}, k={k} ({work} training iterations), batch 60, "
          f"median of {args.repeats}")
    print(f"  plain PyTorch script, {threads} kernel thread(s)  : {same:7.2f} s  ({work / same:6.0f} it/s)")
    print(f"  plain PyTorch script, {torch.get_num_threads()} kernel threads (default): {default:7.2f} s"
          f"  ({work / default:6.0f} it/s)")
    print(f"  lmcsweep (Runner), train.cpu_threads {threads}   : {q:7.2f} s  ({work / q:6.0f} it/s)")
    print(f"  speed ratio (lmcsweep / plain, same threads): {same / q:.2f}  (target >= 0.85)")
    print(f"  speed ratio (lmcsweep / plain, default threads): {default / q:.2f}")

if __name__ == "__main__":
    main()
