#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes on a lent machine): ResNet-20 training throughput on
# synthetic CIFAR-shaped data through the project's path (data + augmentation on the device,
# channels_last) in fp32, bf16 autocast and bf16 + torch.compile, and the same training as a plain
# PyTorch DataLoader loop (CPU workers, torchvision transforms). Prints images/s and the ratios,
# measured side by side in one run. Then copies on the GPU: ResNet-20 copies one after another (the
# runner's way) against copies on threads with a CUDA stream each (bench/copies.py --streams).
#
#   bash bench/gpu.sh            # on the GPU machine
#   bash bench/gpu.sh --tiny     # CPU, tiny sizes, no compile: keeps the script from rotting (a test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [[ " $* " == *" --tiny "* ]]; then
    copies=(--model lenet --iterations 20 --repeats 1 --copies 1,2 --streams)
else
    copies=(--model resnet20 --iterations 150 --repeats 3 --streams)
fi
timeout 330 "$PY" - "$@" <<'PYEOF'
import os, statistics, sys, time
import torch, torch.nn.functional as F
from lmcsweep.config import Hyper
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model
from lmcsweep.train import make_optimizer, train

tiny = "--tiny" in sys.argv
device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
if device.type == "cpu" and not tiny:
    sys.exit("no CUDA device: run with --tiny for the CPU smoke mode")
N, iters, warm, batch = (256, 3, 1, 32) if tiny else (50000, 300, 30, 128)
options = {"width": 4, "depth": 8} if tiny else {}
data = load_dataset("synthetic", synthetic={"shape": (3, 32, 32), "classes": 10, "train": N, "test": 64, "seed": 0})
print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (tiny mode)'}; torch {torch.__version__};"
      f" resnet20{' (shrunk)' if tiny else ''}, batch {batch}, {iters} timed iterations after {warm} warm-up")

def hyper(precision="fp32", compile_=False):
    return Hyper(preset="resnet20", model="resnet20", model_options=options, dataset="synthetic",
                 augmentation="crop_flip", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                 batch_size=batch, iterations=warm + iters, schedule="constant", milestones=(), gamma=0.1,
                 final_lr=0.0, warmup=0, iterations_per_epoch=N // batch, eval_every=10**9,
                 checkpoint_every=10**9, precision=precision, compile=compile_)

def model():
    m = build_model("resnet20", 10, (3, 32, 32), 0, **options).to(device)
    return m.to(memory_format=torch.channels_last) if device.type == "cuda" else m

def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()

def project(precision="fp32", compile_=False):
    h = hyper(precision, compile_)
    loader = make_loader(data, "train", batch, 0, 0, "crop_flip", device=str(device))
    m = model()
    net = torch.compile(m) if compile_ else m
    steps = train(net, make_optimizer(m, h), loader.train_batches(0, warm + iters), h, 0, warm + iters,
                  [warm], None, device)
    next(steps)  # warm-up (and compilation) up to iteration `warm`
    sync(); t = time.perf_counter()
    for _ in steps:
        pass
    sync()
    return iters * batch / (time.perf_counter() - t)

def plain_dataloader():
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2
    x, y = data.split("train")
    tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(list(data.mean), list(data.std))])

    class D(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return tf(x[i]), y[i]

    workers = 0 if tiny else min(8, max(1, (os.cpu_count() or 2) - 1))
    loader = DataLoader(D(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    m.train()
    done, t = 0, None
    while done < warm + iters:
        for xb, yb in loader:
            if done == warm:
                sync(); t = time.perf_counter()
            if done == warm + iters:
                break
            xb = xb.to(device, non_blocking=True)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(m(xb), yb.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    sync()
    return iters * batch / (time.perf_counter() - t)

runs = [("plain DataLoader loop, fp32", plain_dataloader),
        ("project fp32", lambda: project("fp32")),
        ("project bf16", lambda: project("bf16")),
        ("project bf16 + compile", (lambda: project("bf16", True)) if not tiny else None)]
results = {}
for name, fn in runs:
    if fn is None:
        print(f"  {name:34s} skipped (tiny mode)")
        continue
    results[name] = fn()
    print(f"  {name:34s} {results[name]:10.0f} images/s", flush=True)
base, fp32 = results["plain DataLoader loop, fp32"], results["project fp32"]
print("ratios:")
for name, value in results.items():
    print(f"  {name:34s} {value / base:6.2f}x plain DataLoader   {value / fp32:6.2f}x project fp32")
PYEOF
echo "copies:"
timeout 130 "$PY" bench/copies.py "${copies[@]}"
