"""Copies trained together: time of 1, 2 and 4 copies trained together (`copies.together`, as the
runner does) against one copy trained alone, side by side in one process, median of repeats.

Two baselines for "one alone": the project's own (`together` with one copy: one kernel thread, the
way every copy trains so its numbers never depend on its group or the core count) and the plain
`train` loop at torch's default thread count (what a lone script would get from all cores).
LeNet-300-100 on in-memory Fashion-MNIST, Adam, batch 60, on CPU; with CUDA also ResNet-20 on
synthetic CIFAR-shaped data (SGD, batch 128). Each copy has its own data order. Targets (CPU, LeNet):
2 copies <= 1.4x one alone, 4 copies <= 2.2x.

`--streams` adds a measurement for the GPU path, where the runner trains copies one after another:
n copies on n Python threads, each issuing its kernels on its own CUDA stream (on CPU: plain
threads), to see whether overlapping small networks' kernels on one GPU pays before the runner
does it.

    .venv/bin/python bench/copies.py [--iterations 1000] [--repeats 5] [--model lenet|resnet20] [--streams]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time

import torch

from lmcsweep.config import Hyper
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model
from lmcsweep.run.together import together
from lmcsweep.train import make_optimizer, train


def hyper(model: str, iterations: int, ipe: int) -> Hyper:
    sgd = model != "lenet"
    return Hyper(preset=model, model=model, model_options={}, dataset="", augmentation="none",
                 optimizer="sgd" if sgd else "adam", lr=0.1 if sgd else 1.2e-3, momentum=0.9 if sgd else 0.0,
                 weight_decay=1e-4 if sgd else 0.0, batch_size=128 if sgd else 60, iterations=iterations,
                 schedule="constant", milestones=(), gamma=0.1, final_lr=0.0, warmup=0, iterations_per_epoch=ipe,
                 eval_every=iterations, checkpoint_every=iterations)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None, choices=["lenet", "resnet20"])
    ap.add_argument("--copies", default="1,2,4")
    ap.add_argument("--streams", action="store_true", help="also: copies on threads, a CUDA stream each")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [args.model] if args.model else (["lenet", "resnet20"] if device.type == "cuda" else ["lenet"])
    counts = [int(c) for c in args.copies.split(",")]
    for name in models:
        if name == "lenet":
            data = load_dataset("fashion_mnist")
        else:
            data = load_dataset("synthetic", synthetic={"shape": (3, 32, 32), "classes": 10, "train": 5000,
                                                       "test": 100, "seed": 0})
        h = hyper(name, args.iterations, 0)
        aug = "none" if name == "lenet" else "crop_flip"
        loaders = [make_loader(data, "train", h.batch_size, seed, seed, aug, device=str(device))
                   for seed in range(max(counts))]
        T = args.iterations

        def model():
            m = build_model(name, data.num_classes, data.shape, 0).to(device)
            return m.to(memory_format=torch.channels_last) if device.type == "cuda" and name != "lenet" else m

        def one(c):
            m = model()
            for _ in train(m, make_optimizer(m, h), loaders[c].train_batches(0, T), h, 0, T, (), None, device):
                pass

        def alone():  # the plain loop, torch's default threads
            one(0)

        def together_(n):
            for out in together([lambda c=c: one(c) for c in range(n)], device):
                if isinstance(out, BaseException):
                    raise out

        def on_streams(n):  # a thread per copy, each on its own CUDA stream
            errors: list[BaseException] = []

            def run(c):
                try:
                    stream = torch.cuda.Stream() if device.type == "cuda" else None
                    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                        one(c)
                    if stream is not None:
                        stream.synchronize()
                except BaseException as exc:  # noqa: BLE001 -- re-raised below
                    errors.append(exc)
            threads = [threading.Thread(target=run, args=(c,)) for c in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]

        runs = {f"x{n}": (lambda n=n: together_(n)) for n in counts}
        if args.streams:
            runs |= {f"s{n}": (lambda n=n: on_streams(n)) for n in counts}
        alone()  # warm-up
        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {"alone": []} | {key: [] for key in runs}
        for _ in range(args.repeats):  # interleaved, so load on the machine hits all alike
            times["alone"].append(timed(alone, device))
            for key, fn in runs.items():
                times[key].append(timed(fn, device))
        plain = statistics.median(times["alone"])
        base = statistics.median(times["x1"]) if 1 in counts else plain
        print(f"{name} on {device} ({torch.get_num_threads()} threads), {T} iterations, batch {h.batch_size}, "
              f"median of {args.repeats}")
        print(f"  one alone, plain loop ({torch.get_num_threads()} kernel threads): {plain:7.3f} s  {T / plain:8.1f} it/s")
        for n in counts:
            t = statistics.median(times[f"x{n}"])
            print(f"  {n} copies together:  {t:7.3f} s  {t / base:5.2f}x one alone (project)"
                  f"  {t / plain:5.2f}x one alone (plain loop)  {n * base / t:4.2f} copies per alone-time")
        for n in counts if args.streams else []:
            t = statistics.median(times[f"s{n}"])
            where = "a CUDA stream each" if device.type == "cuda" else "plain threads"
            print(f"  {n} copies on threads ({where}): {t:7.3f} s  {t / base:5.2f}x one alone (project)"
                  f"  {t / plain:5.2f}x one alone (plain loop)")


if __name__ == "__main__":
    main()
