"""The ways of training many copies of a network together that bench/gpu_copies.py times.

Every copy is the project's own: its network from `build_model` (init seed = its index), its own
tensor loader on the device (data order seed = its index, augmentation seed = 1000 + index), its own
fused SGD (`make_optimizer`). A way ("candidate") is built over a list of copies and has `warm()`
(the first `warm` steps of every copy, compilation or capture included), `run()` (the remaining
steps, the timed part) and `state0()` (copy 0's weights and buffers afterwards, on the CPU), so a
copy takes the same batches at the same steps whatever the way and whatever its group.

- loop: today's path, `lmcsweep.train.train` for one copy after another;
- streams: one Python thread, the copies' steps round-robin, each copy on its own CUDA stream;
- threads: one Python thread and one CUDA stream per copy;
- graphs: each copy's whole step (forward, backward, optimizer) captured once as a CUDA graph and
  replayed, copies one after another on one stream; graphs+streams: each on its own stream;
  graphs+threads: each replayed from its own Python thread on its own stream;
- vmap: `torch.func.stack_module_state` + `vmap(functional_call)`, one step for all copies (convolutions
  become grouped convolutions), one fused SGD over the stacked parameters; vmap+graphs: that step
  captured as one CUDA graph.
The processes candidates (several worker processes on the GPU, each running one of these over its
share of the copies) are driven from bench/gpu_copies.py with `worker` below.
"""

from __future__ import annotations

import contextlib
import copy as copying
import faulthandler
import threading
import time

import torch
import torch.nn.functional as F

from lmcsweep.config import Hyper
from lmcsweep.data import load_dataset, make_loader
from lmcsweep.models import build_model
from lmcsweep.optim import Fused
from lmcsweep.train import make_optimizer, train

MODELS = {"resnet20": {"shape": (3, 32, 32), "batch": 128, "augmentation": "crop_flip"},
          "lenet": {"shape": (1, 28, 28), "batch": 60, "augmentation": "none"}}
TINY_OPTIONS = {"resnet20": {"width": 4, "depth": 8}, "lenet": {"hidden": (32, 16)}}
EAGER_WARM = 3  # eager steps before a capture (on a side stream, as PyTorch's graph docs do)


def dataset(model: str, examples: int):
    return load_dataset("synthetic", synthetic={"shape": MODELS[model]["shape"], "classes": 10,
                                                "train": examples, "test": 64, "seed": 0})


def hyper(model: str, data, options: dict) -> Hyper:
    batch = MODELS[model]["batch"]
    return Hyper(preset=model, model=model, model_options=options, dataset="synthetic",
                 augmentation=MODELS[model]["augmentation"], optimizer="sgd", lr=0.05, momentum=0.9,
                 weight_decay=1e-4, batch_size=batch, iterations=10**9, schedule="constant", milestones=(),
                 gamma=0.1, final_lr=0.0, warmup=0, iterations_per_epoch=data.num_examples("train") // batch,
                 eval_every=10**9, checkpoint_every=10**9)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Copy:
    """One network with its own data order, augmentation draws and optimizer state."""

    def __init__(self, index: int, model: str, data, h: Hyper, device: torch.device):
        self.index, self.h, self.device = index, h, device
        net = build_model(model, 10, MODELS[model]["shape"], index, **h.model_options).to(device)
        if device.type == "cuda" and model != "lenet":
            net = net.to(memory_format=torch.channels_last)  # as the runner does on a GPU
        self.net, self.opt = net, make_optimizer(net, h)
        self.loader = make_loader(data, "train", h.batch_size, index, 1000 + index, h.augmentation,
                                  device=str(device))
        self.batches = self.loader.train_batches(0, 10**9)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def step(self) -> None:
        """One step of `train` (constant learning rate, no masks), written out."""
        x, y = next(self.batches)
        loss = F.cross_entropy(self.net(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}


class Loop:
    """Today's path: `lmcsweep.train.train`, one copy after another."""

    def __init__(self, copies: list[Copy], warm: int, total: int):
        self.copies = copies
        self.runs = [train(c.net, c.opt, c.batches, c.h, 0, total, [warm], None, c.device) for c in copies]

    def warm(self) -> None:
        for run in self.runs:
            next(run)

    def run(self) -> None:
        for run in self.runs:
            for _ in run:
                pass

    def state0(self):
        return self.copies[0].state()


class Streams:
    """Round-robin in one thread, each copy's kernels on its own CUDA stream."""

    def __init__(self, copies: list[Copy], warm: int, total: int):
        self.copies, self.steps = copies, (warm, total - warm)

    def _steps(self, n: int) -> None:
        for _ in range(n):
            for c in self.copies:
                with c.on_stream():
                    c.step()

    def warm(self) -> None:
        self._steps(self.steps[0])

    def run(self) -> None:
        self._steps(self.steps[1])

    def state0(self):
        sync(self.copies[0].device)
        return self.copies[0].state()


class Threads(Streams):
    """One Python thread and one CUDA stream per copy (the GIL shared)."""

    def _steps(self, n: int) -> None:
        errors: list[BaseException] = []

        def body(c: Copy) -> None:
            try:
                with c.on_stream():
                    for _ in range(n):
                        c.step()
            except BaseException as exc:  # noqa: BLE001 -- reported by the caller
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(c,)) for c in self.copies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def _capture(step_fn, device: torch.device, stream=None) -> torch.cuda.CUDAGraph:
    """Capture `step_fn()` (which reads static inputs) as a CUDA graph with a private memory pool."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        step_fn()
    sync(device)
    return graph


class Graphs:
    """Each copy's step captured as a CUDA graph, replayed after copying its batch into the graph's
    static input; `streams`: each copy's replays on its own stream. The lr is baked into the graph
    (constant schedule here; a schedule needs a tensor lr)."""

    def __init__(self, copies: list[Copy], warm: int, total: int, streams: bool = False):
        if copies[0].device.type != "cuda":
            raise RuntimeError("CUDA graphs need a GPU")
        self.copies, self.streams, self.steps = copies, streams, (warm - EAGER_WARM, total - warm)
        self.statics = []
        for c in copies:
            side = torch.cuda.Stream(c.device)
            side.wait_stream(torch.cuda.current_stream(c.device))
            with torch.cuda.stream(side):
                for _ in range(EAGER_WARM):
                    c.step()
            torch.cuda.current_stream(c.device).wait_stream(side)
            sync(c.device)
            x0, y0 = c.loader.finish_eval(c.loader.x[:c.h.batch_size]), c.loader.y[:c.h.batch_size]
            sx, sy = x0.clone(), y0.clone()  # graph inputs (filled with each step's batch before replay)

            def step(c=c, sx=sx, sy=sy):
                loss = F.cross_entropy(c.net(sx).float(), sy)
                loss.backward()
                c.opt.step()

            c.opt.zero_grad(set_to_none=True)  # the graph's backward allocates the grads it reuses
            self.statics.append((sx, sy, _capture(step, c.device)))

    def _steps(self, n: int) -> None:
        for _ in range(n):
            for c, (sx, sy, graph) in zip(self.copies, self.statics):
                with (c.on_stream() if self.streams else contextlib.nullcontext()):
                    x, y = next(c.batches)
                    sx.copy_(x)
                    sy.copy_(y)
                    graph.replay()

    def warm(self) -> None:
        self._steps(self.steps[0])

    def run(self) -> None:
        self._steps(self.steps[1])

    def state0(self):
        sync(self.copies[0].device)
        return self.copies[0].state()


class GraphThreads(Graphs):
    """graphs+streams with one Python thread per copy, as an executor running each job's body on
    its own thread would replay them."""

    def __init__(self, copies: list[Copy], warm: int, total: int):
        super().__init__(copies, warm, total, streams=True)

    def _steps(self, n: int) -> None:
        errors: list[BaseException] = []

        def body(c: Copy, sx, sy, graph) -> None:
            try:
                with c.on_stream():
                    for _ in range(n):
                        x, y = next(c.batches)
                        sx.copy_(x)
                        sy.copy_(y)
                        graph.replay()
            except BaseException as exc:  # noqa: BLE001 -- reported by the caller
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(c, *st)) for c, st in zip(self.copies, self.statics)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


class VMap:
    """All copies as one vmapped network over stacked parameters and buffers; one SGD for all."""

    def __init__(self, copies: list[Copy], warm: int, total: int, graphs: bool = False):
        from torch.func import functional_call, stack_module_state, vmap

        self.copies, self.steps, h = copies, (warm, total - warm), copies[0].h
        params, self.buffers = stack_module_state([c.net for c in copies])
        # vmap cannot ask a channels_last tensor for its layout (NYI in torch 2.11): stack in the default one
        self.params = {k: v.detach().contiguous().requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.contiguous() for k, v in self.buffers.items()}
        base = copying.deepcopy(copies[0].net).to("meta")

        def loss_of(p, b, x, y):
            return F.cross_entropy(functional_call(base, (p, b), (x,)).float(), y)

        self.losses = vmap(loss_of)
        self.opt = Fused(list(self.params.values()), "sgd", h.lr, h.momentum, h.weight_decay)
        self.graph = None
        if graphs:
            if copies[0].device.type != "cuda":
                raise RuntimeError("CUDA graphs need a GPU")
            side = torch.cuda.Stream(copies[0].device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(EAGER_WARM):
                    self._eager()
            torch.cuda.current_stream().wait_stream(side)
            self.steps = (warm - EAGER_WARM, total - warm)
            b = h.batch_size  # graph inputs, filled with each step's batches before replay (none drawn here)
            self.sx = torch.stack([c.loader.finish_eval(c.loader.x[:b]) for c in copies])
            self.sy = torch.stack([c.loader.y[:b] for c in copies]).clone()

            def step():
                self.losses(self.params, self.buffers, self.sx, self.sy).sum().backward()
                self.opt.step()

            self.opt.zero_grad(set_to_none=True)
            self.graph = _capture(step, copies[0].device)

    def _batch(self):
        xs, ys = zip(*(next(c.batches) for c in self.copies))
        return torch.stack(xs), torch.stack(ys)

    def _eager(self) -> None:
        x, y = self._batch()
        loss = self.losses(self.params, self.buffers, x, y).sum()  # copy c's gradient is its own loss's
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _steps(self, n: int) -> None:
        for _ in range(n):
            if self.graph is None:
                self._eager()
            else:
                x, y = self._batch()
                self.sx.copy_(x)
                self.sy.copy_(y)
                self.graph.replay()

    def warm(self) -> None:
        self._steps(self.steps[0])

    def run(self) -> None:
        self._steps(self.steps[1])

    def state0(self):
        sync(self.copies[0].device)
        out = {k: v[0].detach().cpu().clone() for k, v in self.params.items()}
        out.update({k: v[0].detach().cpu().clone() for k, v in self.buffers.items()})
        return out


CANDIDATES = {
    "loop": Loop,
    "streams": Streams,
    "threads": Threads,
    "graphs": Graphs,
    "graphs+streams": lambda c, w, t: Graphs(c, w, t, streams=True),
    "graphs+threads": GraphThreads,
    "vmap": VMap,
    "vmap+graphs": lambda c, w, t: VMap(c, w, t, graphs=True),
}
GPU_ONLY = ("graphs", "graphs+streams", "graphs+threads", "vmap+graphs")


def timed(model: str, candidate: str, ids: list[int], data, h: Hyper, device: torch.device,
          warm: int, iters: int, ready=None) -> tuple[float, float, dict | None]:
    """Build the copies `ids`, warm them up, (tell `ready()` and wait for it), time the rest:
    (start, end, copy 0's final state if 0 is among ids)."""
    copies = [Copy(i, model, data, h, device) for i in ids]
    way = CANDIDATES[candidate](copies, warm, warm + iters)
    way.warm()
    sync(device)
    if ready is not None:
        ready()
    start = time.perf_counter()
    way.run()
    sync(device)
    end = time.perf_counter()
    return start, end, (way.state0() if ids and ids[0] == 0 else None)


def worker(rank: int, jobs, results, go, settings: dict) -> None:
    """A worker process: takes (model, candidate, ids, warm, iters) jobs from `jobs`, answers
    ("ready", rank) when warmed up, waits for `go`, then ("done", rank, start, end, state0);
    ("error", rank, text) on failure. `settings`: device, tiny, deterministic, examples."""
    try:
        device = torch.device(settings["device"])
        torch.set_num_threads(1)
        if settings.get("deterministic"):
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        if device.type == "cuda":
            torch.zeros(1, device=device).sum().item()  # the context, before "up"
        results.put(("up", rank))
    except BaseException as exc:  # noqa: BLE001
        results.put(("error", rank, repr(exc)))
        return
    cache = {}
    while True:
        job = jobs.get()
        if job is None:
            return
        model, candidate, ids, warm, iters = job
        try:
            if model not in cache:
                data = dataset(model, settings["examples"][model])
                cache[model] = (data, hyper(model, data, TINY_OPTIONS[model] if settings["tiny"] else {}))
            data, h = cache[model]

            def ready():
                results.put(("ready", rank))
                go.wait()

            faulthandler.dump_traceback_later(settings.get("wait", 120.0), exit=False)  # stacks of a hang
            start, end, state = timed(model, candidate, ids, data, h, device, warm, iters, ready)
            faulthandler.cancel_dump_traceback_later()
            results.put(("done", rank, start, end, state))
        except BaseException as exc:  # noqa: BLE001 -- the parent reports it and goes on
            results.put(("error", rank, f"{type(exc).__name__}: {exc}"[:300]))
