"""Interpolation: the error at 30 alphas of a pair on the full Fashion-MNIST test and train sets
(70,000 examples), all alphas stacked and each batch read once (`interpolate.error_curves`), against
30 separate plain evaluations per split (`interpolate.error_curve`), side by side, median of repeats.
Target: batched <= 0.5x the plain time. Also reports the batched path without the endpoint trick.

    .venv/bin/python bench/interpolate.py [--alphas 30] [--repeats 3] [--model lenet|resnet20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmcsweep import interpolate as interp
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alphas", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="lenet", choices=["lenet", "resnet20"])
    ap.add_argument("--train-examples", type=int, default=None, help="first N train examples (default: all)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model == "lenet":
        data = load_dataset("fashion_mnist")
    else:
        data = load_dataset("synthetic", synthetic={"shape": (3, 32, 32), "classes": 10, "train": 5000,
                                                   "test": 1000, "seed": 0})
    ends = [build_model(args.model, data.num_classes, data.shape, seed).to(device).state_dict() for seed in (1, 2)]
    model = build_model(args.model, data.num_classes, data.shape, 0).to(device)
    loaders = {s: make_loader(data, s, 1000, 0, 0, "none", device=str(device)) for s in ("test", "train")}
    limit = {"test": None, "train": args.train_examples}
    splits = {s: (lambda s=s: loaders[s].eval_batches(batch_size=1000, limit=limit[s])) for s in loaders}
    points = interp.alphas(args.alphas)

    def plain():
        return {s: interp.error_curve(model, ends[0], ends[1], points, b) for s, b in splits.items()}

    def batched(trick=True):
        return interp.error_curves(model, ends[0], ends[1], points, splits, endpoint_trick=trick)

    ref = batched()
    times: dict[str, list[float]] = {"plain": [], "batched": [], "no_trick": []}
    for _ in range(args.repeats):
        for key, fn in (("plain", plain), ("batched", batched), ("no_trick", lambda: batched(False))):
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
            if key == "plain":
                diff = max(abs(a - b) for s in out for a, b in zip(out[s], ref[s]))
    n = sum(loaders[s].num_examples if limit[s] is None else limit[s] for s in loaders)
    base = statistics.median(times["plain"])
    print(f"{args.model} on {device} ({torch.get_num_threads()} threads): {args.alphas} alphas x {n} examples, "
          f"median of {args.repeats}")
    print(f"  {args.alphas} plain evaluations per split: {base:7.3f} s")
    for key, label in (("batched", "batched, endpoint trick"), ("no_trick", "batched, no trick")):
        t = statistics.median(times[key])
        print(f"  {label:28s} {t:7.3f} s  ratio {t / base:5.2f}x")
    print(f"  largest |error difference| batched vs plain: {diff:.2e}")


if __name__ == "__main__":
    main()
