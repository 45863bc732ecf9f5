"""Many networks at once on one GPU: images/s of 1, 2, 4, 8, 16 copies of ResNet-20 (batch 128,
CIFAR-shaped) and LeNet (batch 60, MNIST-shaped) trained together by each candidate way, side by
side in one run, against one network with today's loop (`lmcsweep.train.train`), and a plain
PyTorch DataLoader loop; then whether copy 0's final weights depend on what trained beside it.

Candidates (bench/_gpu_candidates.py): loop, streams, threads, graphs, graphs+streams,
graphs+threads, vmap, vmap+graphs in this process, and processes / processes+graphs: one spawned
worker process per copy (up to --procs), each running the loop (or a captured graph) over its
copies. Every copy keeps its own init seed, data order, augmentation draws and optimizer state;
synthetic data lives on the device; SGD with momentum, constant lr, fp32 (TF32 convolutions:
PyTorch's default). Each cell: warm-up steps per copy (ResNet-20 10, LeNet 20; graph capture
included), then timed steps (50, 200; torch.cuda.synchronize around them); one measurement per
cell, and the 1-copy loop is timed again at the end of each model to show the spread. A
deterministic worker (use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG) times the loop alone
and the --deterministic ways in a group again, to price determinism.

Reproducibility: copy 0 trains the same steps on the same batches in every cell, so its final
weights in a group of n are compared with its weights trained alone (same way) and with today's loop
alone: "bitwise" or the largest absolute difference.

    python bench/gpu_copies.py --models resnet20 --out DIR   # on a GPU, ~3.5 min on an H200
    python bench/gpu_copies.py --models lenet --out DIR      # ~2.5 min (both at once: --budget)
    python bench/gpu_copies.py --tiny           # CPU, shrunk networks, a few steps (a test runs it)
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import queue
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _gpu_candidates as cand  # noqa: E402

IN_PROCESS = ["loop", "streams", "threads", "graphs", "graphs+streams", "graphs+threads", "vmap", "vmap+graphs"]
IN_WORKERS = {"processes": "loop", "processes+graphs": "graphs"}
DET_ALONE = "loop (deterministic)"


def DETERMINISTIC(group: int, ways: list[str]):  # noqa: N802 -- (label, way, copies) on the deterministic worker
    return ([(DET_ALONE, "loop", 1), ("loop (deterministic, again)", "loop", 1)]
            + [(f"{w} (deterministic)", w, group) for w in ways if w])


class Pool:
    """Spawned worker processes on the device, each with its own job queue; one results queue."""

    def __init__(self, count: int, settings: dict, deterministic: bool = False, wait: float = 120.0):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.results, self.go, self.broken, self.wait = ctx.Queue(), ctx.Event(), False, wait
        self.jobs = [ctx.Queue() for _ in range(count)]
        saved = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if deterministic:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what cuBLAS needs to be deterministic
        self.procs = [ctx.Process(target=cand.worker, args=(r, self.jobs[r], self.results, self.go,
                                                            {**settings, "deterministic": deterministic}),
                                  daemon=True) for r in range(count)]
        for p in self.procs:
            p.start()
        if deterministic:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
            if saved is not None:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved
        for _ in range(count):
            msg = self.results.get(timeout=max(self.wait, 120.0))
            if msg[0] != "up":
                raise RuntimeError(f"worker {msg[1]}: {msg[2]}")

    def run(self, model: str, candidate: str, n: int, warm: int, iters: int):
        """n copies over min(n, workers) workers: (seconds from the first start to the last end,
        copy 0's state). A worker that does not answer in time leaves the pool unusable."""
        if self.broken:
            raise RuntimeError("a worker did not answer in time earlier")
        try:
            return self._run(model, candidate, n, warm, iters)
        except queue.Empty:
            self.broken = True
            raise RuntimeError(f"no answer from a worker in {self.wait:.0f} s") from None

    def _run(self, model: str, candidate: str, n: int, warm: int, iters: int):
        used = min(n, len(self.jobs))
        for r in range(used):
            self.jobs[r].put((model, candidate, list(range(r, n, used)), warm, iters))
        ready, errors, spans, state = 0, [], [], None
        while ready + len(errors) < used:
            msg = self.results.get(timeout=self.wait)
            if msg[0] == "ready":
                ready += 1
            else:
                errors.append(msg[2])
        self.go.set()
        while len(spans) < ready:
            msg = self.results.get(timeout=self.wait)
            if msg[0] == "done":
                spans.append(msg[2:4])
                state = msg[4] if msg[4] is not None else state
            else:
                errors.append(msg[2])
                ready -= 1
        self.go.clear()
        if errors:
            raise RuntimeError(errors[0])
        return max(e for _, e in spans) - min(s for s, _ in spans), state

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)


def plain_dataloader(model: str, data, h, device, warm: int, iters: int, tiny: bool) -> float:
    """The same training as a plain PyTorch script: CPU DataLoader workers, torchvision transforms."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    x, y = data.split("train")
    steps = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]
    if h.augmentation == "crop_flip":
        steps = [v2.RandomCrop(x.shape[-1], padding=4), v2.RandomHorizontalFlip(), *steps]
    tf = v2.Compose(steps)

    class D(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return tf(x[i]), y[i]

    workers = 0 if tiny else min(8, max(1, (os.cpu_count() or 2) - 1))
    loader = DataLoader(D(), batch_size=h.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    net = cand.build_model(model, 10, cand.MODELS[model]["shape"], 0, **h.model_options).to(device)
    if device.type == "cuda" and model != "lenet":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
    net.train()
    done, start = 0, None
    while done < warm + iters:
        for xb, yb in loader:
            if done == warm:
                cand.sync(device)
                start = time.perf_counter()
            if done == warm + iters:
                break
            loss = F.cross_entropy(net(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    cand.sync(device)
    return iters * h.batch_size / (time.perf_counter() - start)


def difference(a: dict | None, b: dict | None) -> str:
    if a is None or b is None:
        return "-"
    if all(torch.equal(a[k], b[k]) for k in b):
        return "bitwise"
    return f"{max((a[k].double() - b[k].double()).abs().max().item() for k in b):.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, shrunk networks, a few steps")
    ap.add_argument("--models", default="resnet20,lenet")
    ap.add_argument("--copies", default=None, help="default 1,2,4,8,16 (tiny: 1,2)")
    ap.add_argument("--candidates", default=",".join(IN_PROCESS + list(IN_WORKERS) + ["dataloader"]))
    ap.add_argument("--procs", type=int, default=16, help="most worker processes")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds; later cells are skipped after it")
    ap.add_argument("--deterministic", default="streams,graphs+streams",
                    help="ways timed in a group on the deterministic worker ('none': no such worker)")
    ap.add_argument("--wait", type=float, default=120.0, help="seconds to wait for a worker's answer")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_copies.json/.txt")
    args = ap.parse_args()
    t_begin = time.monotonic()
    tiny = args.tiny
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not tiny:
        sys.exit("no CUDA device: run with --tiny for the CPU smoke mode")
    if tiny:
        torch.set_num_threads(1)
    counts = [int(c) for c in (args.copies or ("1,2" if tiny else "1,2,4,8,16")).split(",")]
    group = 8 if 8 in counts else max(counts)
    wanted = [c for c in args.candidates.split(",") if device.type == "cuda" or
              (c not in cand.GPU_ONLY and IN_WORKERS.get(c) not in cand.GPU_ONLY)]
    steps = {"resnet20": (2 if tiny else 10, 3 if tiny else 50), "lenet": (2 if tiny else 20, 3 if tiny else 200)}
    examples = {"resnet20": 256 if tiny else 10240, "lenet": 240 if tiny else 6000}
    settings = {"device": str(device), "tiny": tiny, "examples": examples, "wait": args.wait}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (tiny mode)"
    header = (f"{datetime.date.today()} {name}; torch {torch.__version__}, cudnn "
              f"{torch.backends.cudnn.version()}; TF32 convolutions {torch.backends.cudnn.allow_tf32}, matmuls "
              f"{torch.backends.cuda.matmul.allow_tf32}; {os.cpu_count()} CPUs; copies {counts}")
    print(header, flush=True)
    rows, lines = [], []
    procs = [c for c in wanted if c in IN_WORKERS]
    pool = Pool(min(args.procs, max(counts)), settings, wait=args.wait) if procs else None
    det = (Pool(1, settings, deterministic=True, wait=args.wait) if device.type == "cuda" and not tiny
           and args.deterministic != "none" else None)
    print(f"worker processes up after {time.monotonic() - t_begin:.1f} s", flush=True)
    models = args.models.split(",")
    for mi, model in enumerate(models):
        model_deadline = t_begin + args.budget * (0.6 if mi == 0 and len(models) > 1 else 1.0)
        data = cand.dataset(model, examples[model])
        h = cand.hyper(model, data, cand.TINY_OPTIONS[model] if tiny else {})
        warm, iters = steps[model]
        rates, states = {}, {}

        def cell(label, n, fn):
            if time.monotonic() > model_deadline:
                print(f"  {model} {label} x{n}: skipped (budget)", flush=True)
                return
            # a cell that hangs (one did on the H200) leaves every thread's stack in the log
            faulthandler.dump_traceback_later(args.wait, exit=False)
            try:
                seconds, state = fn()
                rates[label, n] = n * iters * h.batch_size / seconds
                states[label, n] = state
                text = f"{rates[label, n]:.0f} images/s"
            except Exception as exc:  # noqa: BLE001 -- one candidate's failure is reported, not fatal
                text = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            faulthandler.cancel_dump_traceback_later()
            print(f"  {model} {label} x{n}: {text}", flush=True)
            rows.append({"model": model, "candidate": label, "copies": n, "result": text,
                         "images_per_s": rates.get((label, n))})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            save(args.out, header, rows, lines + table(model, h.batch_size, counts, rates, states, group))

        def here(c, n):
            def fn():
                start, end, state = cand.timed(model, c, list(range(n)), data, h, device, warm, iters)
                return end - start, state
            return fn

        for c in wanted:  # a way at every group size, then the next way (in --candidates order)
            for n in counts:
                if c in IN_PROCESS:
                    cell(c, n, here(c, n))
                elif c in IN_WORKERS:
                    cell(c, n, lambda c=c, n=n: pool.run(model, IN_WORKERS[c], n, warm, iters))
        if "dataloader" in wanted:
            cell("plain DataLoader", 1, lambda: (iters * h.batch_size / plain_dataloader(
                model, data, h, device, warm, iters, tiny), None))
        if "loop" in wanted:
            cell("loop (again)", 1, here("loop", 1))
        if det is not None:
            for label, c, n in DETERMINISTIC(group, args.deterministic.split(",")):
                cell(label, n, lambda c=c, n=n: det.run(model, c, n, warm, iters))
        lines += table(model, h.batch_size, counts, rates, states, group)
        save(args.out, header, rows, lines)  # after each model: a run stopped later keeps these
    for p in (pool, det):
        if p is not None:
            p.close()
    lines.append(f"total {time.monotonic() - t_begin:.0f} s")
    print("\n".join(lines), flush=True)
    save(args.out, header, rows, lines)


def save(out: str | None, header: str, rows: list, lines: list[str]) -> None:
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu_copies.json"), "w") as f:
            json.dump({"header": header, "cells": rows}, f, indent=1)
        with open(os.path.join(out, "gpu_copies.txt"), "w") as f:
            f.write(header + "\n" + "\n".join(lines) + "\n")


def table(model, batch, counts, rates, states, group) -> list[str]:
    base = rates.get(("loop", 1))
    labels = list(dict.fromkeys(label for label, _ in rates))
    out = [f"{model} (batch {batch}): images/s, and x one network with today's loop"
           f" ({base:.0f} images/s)" if base else f"{model}: no baseline"]
    out.append(f"  {'candidate':28s}" + "".join(f"{n:>17d}" for n in counts))
    for label in labels:
        cells = []
        for n in counts:
            r = rates.get((label, n))
            cells.append(f"{'-':>17s}" if r is None else f"{r:>9.0f} {r / base if base else 0:5.2f}x ")
        out.append(f"  {label:28s}" + "".join(cells))
    out.append(f"  copy 0's final weights and buffers: in a group of {group} vs alone, same way (a row of one:"
               f" a second run vs the first) | alone vs today's loop alone")
    ref = states.get(("loop", 1))
    for label in labels:
        if (label, group) in states or (label, 1) in states:
            first = states.get((DET_ALONE if "(deterministic" in label else "loop", 1))
            alone = states.get((label, 1)) or first
            mine = states.get((label, group)) if (label, group) in states else states.get((label, 1))
            out.append(f"  {label:30s} {difference(mine, alone if label in (DET_ALONE, 'loop') or (label, group) in states else first):>10s} | "
                       f"{difference(states.get((label, 1), mine), ref):>10s}")
    return out


if __name__ == "__main__":
    main()
