"""Training-batch throughput: the project's FFCV and tensor loaders against torchvision's DataLoader.

CIFAR-shaped synthetic data (uint8 3x32x32), crop_flip augmentation (pad 4 + random crop + flip),
normalised float32 batches on the CPU; images/second is the median over a few epochs after one
warm-up epoch, all three side by side in one process. Targets: FFCV >= 2x, tensor >= 5x DataLoader.

    python bench/loaders.py            # 10k images, batch 128, 3 repeats
    python bench/loaders.py --quick    # a tiny run (2k images)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lmcsweep.data import load_dataset, make_loader  # noqa: E402


class TorchvisionStyle(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does: HWC uint8 array -> PIL image -> transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.y = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def time_epochs(make_iter, num_images: int, repeats: int) -> float:
    """Median images/second over `repeats` epochs, after a warm-up epoch."""
    for _ in make_iter(0):
        pass
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for x, y in make_iter(r + 1):
            n += len(y)
        rates.append(n / (time.perf_counter() - t0))
    assert n >= num_images * 0.9, (n, num_images)
    return statistics.median(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run: 2k images")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="DataLoader worker processes (default: one per CPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in the main process (default 1: small batch ops on a"
                        " few cores lose to thread hand-offs)")
    p.add_argument("--skip", nargs="*", default=[], choices=["ffcv", "tensor", "dataloader"])
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 2000, 3
    torch.set_num_threads(args.threads)

    data = load_dataset("synthetic", synthetic={"shape": [3, 32, 32], "train": args.images,
                                                "test": 100, "seed": 0})
    bs = args.batch_size
    results: dict[str, float] = {}
    print(f"{args.images} CIFAR-shaped images, batch {bs}, crop_flip, {args.repeats} repeat(s),"
          f" {os.cpu_count()} CPUs, torch threads {args.threads}", flush=True)

    if "dataloader" not in args.skip:
        import torchvision.transforms as T

        transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize(data.mean, data.std)])
        ds = TorchvisionStyle(data.train_x, data.train_y, transform)
        dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True,
                                         num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
        results["DataLoader"] = time_epochs(lambda e: iter(dl), args.images, args.repeats)
        print(f"  DataLoader ({args.workers} workers): {results['DataLoader']:,.0f} img/s", flush=True)
        del dl

    if "tensor" not in args.skip:
        tl = make_loader(data, "train", bs, 0, 0, loader="tensor")
        ipe = tl.iterations_per_epoch
        results["tensor"] = time_epochs(lambda e: tl.train_batches(e * ipe, (e + 1) * ipe),
                                        args.images, args.repeats)
        print(f"  tensor loader: {results['tensor']:,.0f} img/s", flush=True)

    if "ffcv" not in args.skip:
        try:
            import ffcv  # noqa: F401
        except ImportError:
            print("  ffcv loader: skipped (ffcv not installed)")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                fl = make_loader(data, "train", bs, 0, 0, loader="ffcv", ffcv_dir=tmp)
                print(f"  (.beton written in {time.perf_counter() - t0:.1f} s, not timed)")
                ipe = fl.iterations_per_epoch
                results["ffcv"] = time_epochs(lambda e: fl.train_batches(e * ipe, (e + 1) * ipe),
                                              args.images, args.repeats)
                print(f"  ffcv loader ({fl.num_workers} threads): {results['ffcv']:,.0f} img/s",
                      flush=True)

    base = results.get("DataLoader")
    print("\nloader        images/s     vs DataLoader   target")
    targets = {"DataLoader": "", "ffcv": ">= 2x", "tensor": ">= 5x"}
    for name in ("DataLoader", "ffcv", "tensor"):
        if name in results:
            ratio = f"{results[name] / base:6.1f}x" if base else "   n/a"
            print(f"{name:<12}{results[name]:>10,.0f}     {ratio:>10}      {targets[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
