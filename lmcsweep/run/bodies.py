"""What each kind of job does: build the model, load its inputs from the store, call the core
(train / prune / interpolate), save its outputs and log to its MLflow run.

A job body gets a `Context` (the sweep's data, store, tracker, device) and its `Job`; it returns
nothing and raises on failure. Bodies are idempotent: a job killed mid-way resumes from its last
resume checkpoint and ends bit-identical to an uninterrupted run (on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import interpolate as interp
from .. import plots, prune
from ..config import Hyper, SweepConfig
from ..data import DataSet, make_loader
from ..models import build_model
from ..store import Store, Writer
from ..tracking import Tracker
from ..copies import kernel_threads, send, together
from ..optim import Fused
from ..train import evaluate, make_optimizer, train
from ..plan.graph import Job, branch_end, exempt_layers, lr_offset


@dataclass
class Context:
    sweep: SweepConfig
    hyper: Hyper
    store: Store
    tracker: Tracker
    device: torch.device
    data: DataSet
    jobs: dict[str, Job]
    progress: Callable[[int], None] = lambda n: None
    writer: Writer = field(default_factory=Writer)   # checkpoints and metrics, off the training path

    # -- helpers shared by the bodies ------------------------------------------------------
    def model(self, init_seed: int) -> torch.nn.Module:
        h = self.hyper
        options = {k: (int(v) if isinstance(v, float) and v.is_integer() and k in ("width", "depth") else v)
                   for k, v in h.model_options.items()}
        model = build_model(h.model, self.data.num_classes, self.data.shape, init_seed, **options)
        model = model.to(self.device)
        if self.channels_last():
            model = model.to(memory_format=torch.channels_last)
        return model

    def channels_last(self) -> bool:
        """Image models on a GPU use the channels_last layout (CPU results are never touched)."""
        return self.device.type == "cuda" and len(self.data.shape) == 3 and self.data.shape[0] > 1

    def log_device_params(self, run_id: str) -> None:
        """The speed settings a training run actually used, as params beside train.precision/compile."""
        self.writer.submit(self.tracker.log_params, run_id, {
            "train.channels_last": self.channels_last(), "data.device": str(self.device)})

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """`torch.compile(model)` with train.compile on (same parameters, so optimizers and state
        dicts are untouched); the model itself otherwise."""
        return torch.compile(model) if self.hyper.compile else model

    def loader(self, split: str, order_seed: int, aug_seed: int):
        d = self.sweep.data
        return make_loader(self.data, split, self.hyper.batch_size, order_seed, aug_seed,
                           augmentation=self.hyper.augmentation, loader=d.loader, device=str(self.device),
                           ffcv_dir=str(self.store.root / "ffcv"))

    def eval_batches(self, split: str, limit: int | None = None):
        loader = self.loader(split, 0, 0)
        return lambda: loader.eval_batches(batch_size=1000, limit=limit)

    def test_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate(model, self.eval_batches("test")())


def _pauses(h: Hyper, origin: int, end: int, save_at: list[int]) -> set[int]:
    """Where the training of a job from `origin` to `end` pauses: progress ticks, rewind points,
    evaluation and checkpoint cadence. The same set whether or not the job resumed midway (resume
    points are pauses), so a resumed job's mean-loss windows, and curve, are the uninterrupted one's."""
    tick = max(1, min(h.eval_every, (end - origin) // 50 or 1))
    pauses = set(range(origin + tick, end, tick)) | set(save_at)
    return pauses | set(range(0, end, h.eval_every)) | set(range(0, end, h.checkpoint_every))


def _loop(ctx: Context, name: str, run_id: str, steps, start: int, end: int,
          evaluate_now: Callable[[], dict[str, float]], snapshot: Callable[[int], dict[str, Any]],
          on_save: Callable[[int], None] = lambda it: None, save_at: tuple[int, ...] = (),
          history: list[tuple[str, float, int]] | None = None) -> list[tuple[str, float, int]]:
    """Drive `steps` (a `train` generator) from start to end: progress, a finite-loss check, test
    metrics every eval_every, resume checkpoints (`snapshot(it)`) every checkpoint_every. Metrics
    and checkpoints go through ctx.writer, off the training path. A resume checkpoint also holds
    every metric logged up to it (`history`: those of the runs before a resume), so a resumed
    run logs its whole curve however much of it reached the killed run. Returns every metric
    logged (`history` included), for `_trained`."""
    h = ctx.hyper
    logged = list(history or [])
    metrics: list[tuple[str, float, int]] = []
    last = start
    for it, loss in steps:
        if loss is not None:  # None: a pause for a rewind checkpoint, inside a loss window
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss} at iteration {it} ({name})")
            metrics.append(("loss", loss, it))
        ctx.progress(it - last)
        last = it
        if it in save_at:
            on_save(it)
        if it % h.eval_every == 0 or it == end:
            m = evaluate_now()
            metrics += [("test_accuracy", m["accuracy"], it), ("test_loss", m["loss"], it)]
        if (it % h.checkpoint_every == 0 and it < end) or it == end:
            ctx.writer.submit(ctx.tracker.log_metrics, run_id, metrics)
            logged += metrics
            if it < end:
                ctx.writer.submit(ctx.store.save_resume, name, {**snapshot(it), "run_id": run_id,
                                                                "metrics": list(logged)})
            metrics = []
    return logged


def _state(model, optimizer, it: int) -> dict[str, Any]:
    return {"model": _clone(model.state_dict()), "optimizer": _clone(optimizer.state_dict()), "iteration": it}


def _trained(ctx: Context, job: Job, run_id: str, end: int, logged: list[tuple[str, float, int]]) -> None:
    """After a job's final checkpoint (at `end`): its resume record becomes "trained to the end" (no
    weights: they are the final checkpoint's), so a kill before the runner marks the run FINISHED
    (copies of a wave are marked together, when the last one ends) costs no training: the next run
    takes the final checkpoint and the curve from here (`_resume`). The runner removes it once the
    run is FINISHED."""
    ctx.writer.submit(ctx.store.save_resume, job.hash, {"iteration": end, "final": True, "run_id": run_id,
                                                        "metrics": list(logged)})


def run_train(ctx: Context, job: Job, run_id: str) -> None:
    """The dense network of a replicate: init -> T, checkpoints at every rewind point."""
    seeds = job.fields["seeds"]
    model = ctx.model(seeds["init"])
    optimizer = make_optimizer(model, ctx.hyper)
    start, history = _resume(ctx, job, run_id, model, optimizer, 0) or (0, [])
    save_at = sorted(set(job.fields.get("save_at", [])) | {0})
    ctx.log_device_params(run_id)
    if start == 0:
        ctx.writer.submit(ctx.store.save_checkpoint, job.hash, 0, _state(model, optimizer, 0))
    loader = ctx.loader("train", seeds["data_order"], seeds["augmentation"])
    T = ctx.hyper.iterations
    fast = ctx.compiled(model)
    save = [k for k in save_at if k > start]
    steps = train(fast, optimizer, loader.train_batches(start, T), ctx.hyper, start, T,
                  _pauses(ctx.hyper, 0, T, save), None, ctx.device, seeds["augmentation"],
                  windows=_pauses(ctx.hyper, 0, T, []))  # the loss curve: the job's, whatever the rewind points
    with kernel_threads(ctx.hyper.cpu_threads, ctx.device):
        logged = _loop(ctx, job.hash, run_id, steps, start, T, lambda: ctx.test_metrics(fast),
                       lambda it: _state(model, optimizer, it),
                       lambda it: ctx.writer.submit(ctx.store.save_checkpoint, job.hash, it,
                                                    _state(model, optimizer, it)),
                       tuple(save), history)
    ctx.writer.submit(ctx.store.save_checkpoint, job.hash, T, _state(model, optimizer, T))
    m = ctx.test_metrics(fast)
    ctx.writer.submit(ctx.tracker.log_metrics, run_id,
                      [("final_test_accuracy", m["accuracy"], T), ("final_test_error", m["error"], T)])
    _trained(ctx, job, run_id, T, logged)
    ctx.writer.flush()


def _resume(ctx: Context, job: Job, run_id: str, model: torch.nn.Module, optimizer: Fused,
            origin: int) -> tuple[int, list[tuple[str, float, int]]] | None:
    """If a killed run left `job` a resume checkpoint: `model` and `optimizer` as they were there,
    and (resume iteration, metrics logged up to it): the resume checkpoint's, or, where the killed
    run had trained to the end (`_trained`), the final checkpoint's. The new run is tagged
    `resumed_from` and gets those metrics again, so its curves are whole (a resume checkpoint older
    than this holds none: that run's curve starts at the resume point; the KILLED run has the
    rest). None otherwise."""
    resume = ctx.store.load_resume(job.hash, ctx.device)
    if resume is None:
        return None
    if resume.get("final"):  # trained to the end by a run killed before it was marked FINISHED
        resume = {**ctx.store.load_checkpoint(job.hash, resume["iteration"], ctx.device), **resume}
    model.load_state_dict(resume["model"])
    if "optimizer" in resume:  # a copy's final checkpoint holds its weights only (no step is left)
        optimizer.load_state_dict(resume["optimizer"])
    start, history = resume["iteration"], resume.get("metrics", [])
    ctx.progress(start - origin)
    ctx.writer.submit(ctx.tracker.set_tags, run_id, {"resumed_from": start})
    if history:
        ctx.writer.submit(ctx.tracker.log_metrics, run_id, history)
    return start, history


def _clone(obj: Any) -> Any:
    """A deep copy of the tensors of a (nested) state dict, so it can be written in the background."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def ensure_checkpoint(ctx: Context, train_job: Job, k: int) -> dict[str, Any]:
    """The train job's state at k; replayed from its nearest earlier checkpoint if k was not saved."""
    if ctx.store.has_checkpoint(train_job.hash, k):
        return ctx.store.load_checkpoint(train_job.hash, k, ctx.device)
    saved = sorted(int(p.stem[2:]) for p in ctx.store.job_dir(train_job.hash).glob("it*.pt") if int(p.stem[2:]) < k)
    if not saved:
        raise FileNotFoundError(f"job {train_job.hash} has no checkpoint to replay iteration {k} from")
    state = ctx.store.load_checkpoint(train_job.hash, saved[-1], ctx.device)
    seeds = train_job.fields["seeds"]
    model = ctx.model(seeds["init"])
    model.load_state_dict(state["model"])
    optimizer = make_optimizer(model, ctx.hyper)
    optimizer.load_state_dict(state["optimizer"])
    loader = ctx.loader("train", seeds["data_order"], seeds["augmentation"])
    with kernel_threads(ctx.hyper.cpu_threads, ctx.device):  # the same kernels as the run it replays
        for _ in train(model, optimizer, loader.train_batches(saved[-1], k), ctx.hyper, saved[-1], k, (), None,
                       ctx.device, seeds["augmentation"]):
            pass
    out = _state(model, optimizer, k)
    ctx.store.save_checkpoint(train_job.hash, k, out)
    return out


def _masked_optimizer_state(optimizer, model, masks: prune.Masks) -> None:
    """Zero the optimizer's per-weight state (momentum, Adam moments) of pruned weights."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        for value in optimizer.state.get(params[name], {}).values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask.to(value.dtype))


@dataclass
class Copy:
    """A branch ready to train: its model and optimizer at `start`, its mask, its loader, and the
    metrics of the runs before a resume."""

    job: Job
    run_id: str
    model: torch.nn.Module
    optimizer: Fused
    start: int
    masks: prune.Masks | None
    loader: Any
    history: list[tuple[str, float, int]] = field(default_factory=list)


def prepare_branch(ctx: Context, job: Job, run_id: str) -> Copy:
    """A copy from checkpoint k (under a mask or control), or from its own resume checkpoint."""
    f = job.fields
    train_job = ctx.jobs[f["train"]]
    k = f["rewind"]
    masks = load_masks(ctx, f["mask"]) if f["mask"] else None
    if f["control"] == "random_prune":
        masks = prune.random_prune(masks, f["control_seed"])
    seeds = train_job.fields["seeds"]
    model = ctx.model(f["control_seed"] if f["control"] == "random_reinit" else seeds["init"])
    optimizer = make_optimizer(model, ctx.hyper)
    resumed = _resume(ctx, job, run_id, model, optimizer, k)
    start, history = resumed or (k, [])
    if resumed is None:
        state = ensure_checkpoint(ctx, train_job, k)
        if f["control"] != "random_reinit":
            model.load_state_dict(state["model"])
            if f["optimizer"] == "continue":  # its own tensors: load_state_dict keeps the ones it is given
                optimizer.load_state_dict(_clone(state["optimizer"]))
        if masks is not None:
            prune.apply_masks(model, masks)
            _masked_optimizer_state(optimizer, model, masks)
    if masks is not None:
        masks = {n: m.to(ctx.device) for n, m in masks.items()}
        ctx.writer.submit(ctx.tracker.log_metrics, run_id, [("density", prune.density(masks), k)])
    loader = ctx.loader("train", f["seeds"]["data_order"], f["seeds"]["augmentation"])
    return Copy(job, run_id, model, optimizer, start, masks, loader, history)


def run_branches(todo: list[tuple[Context, Job, str]]) -> dict[str, BaseException]:
    """Branches trained together (`run_together`), each prepared where and when it trains, so only
    as many copies as train at once are in memory. Each keeps its own run, resume checkpoint and
    outcome; returns {job hash: exception} for the copies that failed. A copy's result does not
    depend on its group (tests/test_batched.py)."""
    return run_together([(ctx, job.hash, lambda c=ctx, j=job, r=run_id: _train_copy(c, prepare_branch(c, j, r)))
                         for ctx, job, run_id in todo])


def run_trains(todo: list[tuple[Context, Job, str]]) -> dict[str, BaseException]:
    """The dense networks of several replicates (they need nothing but their seeds) trained
    together (`run_together`); returns {job hash: exception} for those that failed."""
    return run_together([(ctx, job.hash, lambda c=ctx, j=job, r=run_id: run_train(c, j, r))
                         for ctx, job, run_id in todo])


def run_together(bodies: list[tuple[Context, str, Callable[[], None]]]) -> dict[str, BaseException]:
    """Job bodies run side by side by `copies.together` (worker processes on CPU, one after another
    on a GPU); returns {job hash: exception} for the bodies that failed. Their contexts (one per
    plan: several when Optuna trials run together) train alike (device, compile, cpu_threads,
    loader: the first one's are used). A worker process writes its checkpoints itself and sends
    its MLflow calls and progress here, where the first context's writer passes them on to the
    tracker in order (a forked process may not use the tracker itself)."""
    contexts = list({id(ctx): ctx for ctx, _, _ in bodies}.values())
    first = contexts[0]
    try:
        for ctx in contexts:
            ctx.writer.flush()  # nothing half-written when workers fork
    except Exception as exc:  # noqa: BLE001
        return {name: exc for _, name, _ in bodies}

    def in_child() -> None:  # a worker process: its own writer thread; runs and progress go through us
        writer = _WorkerWriter(first.tracker)
        for ctx in contexts:
            ctx.writer = writer
            ctx.progress = lambda n: send(("progress", n))

    def on_message(message: tuple) -> None:
        if message[0] == "progress":
            first.progress(message[1])
        else:  # ("tracker", method, args)
            first.writer.submit(getattr(first.tracker, message[1]), *message[2])

    def task(body: Callable[[], None]) -> None:
        body()
        if isinstance(first.writer, _WorkerWriter):
            first.writer.flush()  # its checkpoints are on disk before it reports done

    h = first.hyper
    outcomes = together([lambda b=body: task(b) for _, _, body in bodies], first.device,
                        concurrent=not h.compile, threads=h.cpu_threads,
                        processes=first.sweep.data.loader != "ffcv", in_child=in_child, on_message=on_message)
    failed = {name: out for (_, name, _), out in zip(bodies, outcomes) if isinstance(out, BaseException)}
    for ctx in contexts:
        try:
            ctx.writer.flush()
        except Exception as exc:  # noqa: BLE001
            failed.update({name: exc for c, name, _ in bodies if c is ctx and name not in failed})
    return failed


class _WorkerWriter(Writer):
    """The writer of a copy worker process: store writes on its own thread; calls on the tracker go
    to the parent (`copies.send`), which owns the database connection."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def submit(self, fn, *args) -> None:
        if getattr(fn, "__self__", None) is self.tracker:
            send(("tracker", fn.__name__, args))
        else:
            super().submit(fn, *args)


def _train_copy(ctx: Context, copy: Copy) -> None:
    """One branch from its start to its end (T, or k + T with the schedule restarted at k): the
    training loop on its plain network, test metrics on the evaluation cadence, resume checkpoints,
    then its final checkpoint and metrics. Iterations are global throughout (data order,
    augmentation, cadences, checkpoint names); only the learning rate reads them shifted by k."""
    f, h, start, model = copy.job.fields, ctx.hyper, copy.start, copy.model
    end = branch_end(h, f)
    ctx.log_device_params(copy.run_id)
    fast = ctx.compiled(model)
    test = ctx.eval_batches("test")
    steps = train(fast, copy.optimizer, copy.loader.train_batches(start, end), h, start, end,
                  _pauses(h, f["rewind"], end, []), copy.masks, ctx.device, copy.loader.aug_seed,
                  lr_offset(f))
    logged = _loop(ctx, copy.job.hash, copy.run_id, steps, start, end, lambda: evaluate(fast, test()),
                   lambda it: _state(model, copy.optimizer, it), history=copy.history)
    final = evaluate(fast, test())
    ctx.writer.submit(ctx.store.save_checkpoint, copy.job.hash, end,
                      {"model": _clone(model.state_dict()), "iteration": end})
    ctx.writer.submit(ctx.tracker.log_metrics, copy.run_id, [("final_test_accuracy", final["accuracy"], end),
                                                             ("final_test_error", final["error"], end)])
    _trained(ctx, copy.job, copy.run_id, end, logged)


def run_branch(ctx: Context, job: Job, run_id: str) -> None:
    """One branch on its own (a group of one; see `run_branches`)."""
    failed = run_branches([(ctx, job, run_id)])
    if job.hash in failed:
        raise failed[job.hash]


def load_masks(ctx: Context, prune_job: str) -> prune.Masks:
    return torch.load(ctx.store.job_dir(prune_job) / "mask.pt", map_location="cpu", weights_only=False)


def run_prune(ctx: Context, job: Job, run_id: str) -> None:
    """The mask of an IMP level: global magnitude pruning of the previous level's trained subnetwork."""
    f = job.fields
    model = ctx.model(0)
    if f["source"] is None:  # level 0: the dense network
        masks = prune.full_masks(model, prune.prunable_for(model, f.get("exempt", exempt_layers(ctx.sweep))))
    else:
        source = ctx.jobs[f["source"]]
        weights = ctx.store.load_checkpoint(source.hash, branch_end(ctx.hyper, source.fields))["model"]
        previous = load_masks(ctx, f["previous"])
        if f["style"] == "one_shot":
            masks = prune.prune_to_density(weights, previous, f["target_density"])
        else:
            masks = prune.magnitude_prune(weights, previous, f["fraction"])
    masks = {n: m.cpu() for n, m in masks.items()}
    from ..store import atomic_save

    atomic_save(masks, ctx.store.job_dir(job.hash) / "mask.pt")
    ctx.tracker.log_artifact(run_id, ctx.store.job_dir(job.hash) / "mask.pt", "mask")
    density = prune.density(masks)
    ctx.tracker.log_metrics(run_id, [("density", density, 0)] +
                            [(f"density.{n}", d, 0) for n, d in prune.layer_densities(masks).items()])


def run_interpolate(ctx: Context, job: Job, run_id: str) -> None:
    """Error along the straight path between two branches, on each split; the barrier height."""
    f = job.fields
    a, b = (ctx.jobs[h] for h in f["pair"])
    state_a = ctx.store.load_checkpoint(a.hash, branch_end(ctx.hyper, a.fields), ctx.device)["model"]
    state_b = ctx.store.load_checkpoint(b.hash, branch_end(ctx.hyper, b.fields), ctx.device)["model"]
    model = ctx.model(0)
    points = interp.alphas(f["alphas"])
    train_job = ctx.jobs[a.fields["train"]]
    seeds = train_job.fields["seeds"]
    bn_loader = ctx.loader("train", seeds["data_order"], seeds["augmentation"])
    bn_batches = lambda: bn_loader.train_batches(0, f["bn_batches"])  # noqa: E731
    result: dict[str, Any] = {"alphas": points, "bn": f["bn"]}
    metrics: list[tuple[str, float, int]] = []
    splits = {split: ctx.eval_batches(split, f["train_examples"] if split == "train" else None)
              for split in f["splits"]}
    curves = interp.error_curves(model, state_a, state_b, points, splits, bn=f["bn"], bn_batches=bn_batches)
    for split in f["splits"]:
        curve = curves[split]
        stats = interp.barrier(curve)
        result[split] = {"error": curve, **stats}
        metrics += [(f"error_{split}", e, i) for i, e in enumerate(curve)]
        metrics += [(f"{key}_{split}", float(stats[key]), 0)
                    for key in ("instability", "error_endpoints", "error_max", "stable")]
    ctx.writer.submit(ctx.tracker.log_metrics, run_id, metrics)
    ctx.writer.submit(ctx.tracker.log_dict, run_id, result, "curve.json")
    # drawn by whoever logs it (the tracking process in `lmcsweep run`), off the training path
    t = job.tags
    title = ", ".join([f"{ctx.sweep.name}: replicate {t['replicate']}", f"k={t['rewind']}"]
                      + ([f"level {t['level']}"] if t.get("level") is not None else [])
                      + ([t["control"]] if t.get("control") else []) + [f"copies {t['pair']}"])
    ctx.writer.submit(ctx.tracker.log_plot, run_id, plots.error_curve, (result, title), "curve.png")


BODIES = {"train": run_train, "branch": run_branch, "interpolate": run_interpolate, "prune": run_prune}
