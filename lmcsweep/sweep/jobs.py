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
from .. import prune
from ..config import Hyper, SweepConfig
from ..data import DataSet, load_dataset, make_loader
from ..models import build_model
from ..models.stacked import copy_state, stack
from ..store import Store, Writer
from ..tracking import Tracker
from ..train import (copy_optimizer_state, evaluate, evaluate_group, make_optimizer, stack_optimizer_states, train,
                     train_group)
from .plan import Job, exempt_layers


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
    metric_buffer: list[tuple[str, float, int]] = field(default_factory=list)
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


def _pauses(h: Hyper, start: int, end: int, save_at: list[int]) -> set[int]:
    """Where training pauses: progress ticks, rewind points, evaluation and checkpoint cadence."""
    tick = max(1, min(h.eval_every, (end - start) // 50 or 1))
    pauses = set(range(start + tick, end, tick)) | set(save_at)
    return pauses | set(range(0, end, h.eval_every)) | set(range(0, end, h.checkpoint_every))


def _loop(ctx: Context, names: list[str], runs: list[str], steps, start: int, end: int,
          evaluate_all: Callable[[], list[dict[str, float]]], snapshot: Callable[[int, int], dict[str, Any]],
          on_save: Callable[[int], None] = lambda it: None, save_at: tuple[int, ...] = ()) -> list[str | None]:
    """Drive `steps` (a `train` generator for one network, `train_group` for copies) from start to
    end: progress, per-copy finite-loss checks, test metrics every eval_every, resume checkpoints
    (`snapshot(copy, it)`) every checkpoint_every. Metrics and checkpoints go through ctx.writer.
    Returns each copy's error message (None: fine); a copy that failed stops being logged or saved."""
    h = ctx.hyper
    errors: list[str | None] = [None] * len(runs)
    metrics: list[list[tuple[str, float, int]]] = [[] for _ in runs]
    last = start
    for it, losses in steps:
        losses = losses if isinstance(losses, list) else [losses]
        for c, loss in enumerate(losses):
            if errors[c] is None and not math.isfinite(loss):
                errors[c] = f"FloatingPointError: training loss is {loss} at iteration {it} ({names[c]})"
            metrics[c].append(("loss", loss, it))
        if all(errors):
            raise FloatingPointError(errors[0].split(": ", 1)[1])
        ctx.progress((it - last) * len(runs))
        last = it
        if it in save_at:
            on_save(it)
        if it % h.eval_every == 0 or it == end:
            for c, m in enumerate(evaluate_all()):
                metrics[c] += [("test_accuracy", m["accuracy"], it), ("test_loss", m["loss"], it)]
        if (it % h.checkpoint_every == 0 and it < end) or it == end:
            for c, run_id in enumerate(runs):
                if errors[c] is None:
                    ctx.writer.submit(ctx.tracker.log_metrics, run_id, metrics[c])
                    if it < end:
                        ctx.writer.submit(ctx.store.save_resume, names[c], {**snapshot(c, it), "run_id": run_id})
            metrics = [[] for _ in runs]
    return errors


def _state(model, optimizer, it: int) -> dict[str, Any]:
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": _clone(optimizer.state_dict()), "iteration": it}


def run_train(ctx: Context, job: Job, run_id: str) -> None:
    """The dense network of a replicate: init -> T, checkpoints at every rewind point."""
    seeds = job.fields["seeds"]
    model = ctx.model(seeds["init"])
    optimizer = make_optimizer(model, ctx.hyper)
    start = 0
    resume = ctx.store.load_resume(job.hash, ctx.device)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start = resume["iteration"]
        ctx.progress(start)
    save_at = sorted(set(job.fields.get("save_at", [])) | {0})
    ctx.log_device_params(run_id)
    if start == 0:
        ctx.writer.submit(ctx.store.save_checkpoint, job.hash, 0, _state(model, optimizer, 0))
    loader = ctx.loader("train", seeds["data_order"], seeds["augmentation"])
    T = ctx.hyper.iterations
    fast = ctx.compiled(model)
    save = [k for k in save_at if k > start]
    steps = train(fast, optimizer, loader.train_batches(start, T), ctx.hyper, start, T,
                  _pauses(ctx.hyper, start, T, save), None, ctx.device)
    _loop(ctx, [job.hash], [run_id], steps, start, T, lambda: [ctx.test_metrics(fast)],
          lambda c, it: {"model": _clone(model.state_dict()), "optimizer": _clone(optimizer.state_dict()),
                         "iteration": it},
          lambda it: ctx.writer.submit(ctx.store.save_checkpoint, job.hash, it, _state(model, optimizer, it)),
          tuple(save))
    ctx.writer.submit(ctx.store.save_checkpoint, job.hash, T, _state(model, optimizer, T))
    m = ctx.test_metrics(fast)
    ctx.writer.submit(ctx.tracker.log_metrics, run_id,
                      [("final_test_accuracy", m["accuracy"], T), ("final_test_error", m["error"], T)])
    ctx.writer.submit(ctx.store.clear_resume, job.hash)
    ctx.writer.flush()


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
    for _ in train(model, optimizer, loader.train_batches(saved[-1], k), ctx.hyper, saved[-1], k, (), None, ctx.device):
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
    """A branch ready to train: its model and optimizer at `start`, its mask and its loader."""

    job: Job
    run_id: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    start: int
    masks: prune.Masks | None
    loader: Any

    def group_key(self) -> tuple:
        """Copies train together only from the same iteration with the same optimizer-state layout."""
        state = self.optimizer.state_dict()["state"]
        return (self.start, tuple(sorted((i, tuple(sorted(e))) for i, e in state.items())),
                tuple(float(e["step"]) for e in state.values() if "step" in e))


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
    start = k
    resume = ctx.store.load_resume(job.hash, ctx.device)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start = resume["iteration"]
        ctx.progress(start - k)
    else:
        state = ensure_checkpoint(ctx, train_job, k)
        if f["control"] != "random_reinit":
            model.load_state_dict(state["model"])
            if f["optimizer"] == "continue":
                optimizer.load_state_dict(state["optimizer"])
        if masks is not None:
            prune.apply_masks(model, masks)
            _masked_optimizer_state(optimizer, model, masks)
    if masks is not None:
        masks = {n: m.to(ctx.device) for n, m in masks.items()}
        ctx.writer.submit(ctx.tracker.log_metrics, run_id, [("density", prune.density(masks), k)])
    loader = ctx.loader("train", f["seeds"]["data_order"], f["seeds"]["augmentation"])
    return Copy(job, run_id, model, optimizer, start, masks, loader)


def run_branches(ctx: Context, todo: list[tuple[Job, str]]) -> dict[str, BaseException]:
    """Sibling branches (same train job, rewind point and mask; a level's controls too) trained
    together: copies that start from the same iteration with the same optimizer-state layout are
    stacked into one module (`models.stacked`) and trained by `train_group`. Each keeps its own run,
    resume checkpoint and outcome; returns {job hash: exception} for the copies that failed.

    A copy's result does not depend on its group (tests/test_batched.py): a branch always trains
    through the stacked path, alone as a group of one.
    """
    failed: dict[str, BaseException] = {}
    groups: dict[tuple, list[Copy]] = {}
    for job, run_id in todo:
        try:
            copy = prepare_branch(ctx, job, run_id)
            groups.setdefault(copy.group_key(), []).append(copy)
        except Exception as exc:  # noqa: BLE001 -- recorded on that copy's run by the runner
            failed[job.hash] = exc
    # On a GPU, stacked copies (one grouped convolution / batched matmul per layer) measured slower
    # than copies trained one after another (ResNet-20 on an H200, bench/copies.py): train them apart.
    together = [g for copies in groups.values()
                for g in ([copies] if ctx.device.type != "cuda" else [[c] for c in copies])]
    for copies in together:
        try:
            failed.update(_train_copies(ctx, copies))
        except Exception as exc:  # noqa: BLE001
            failed.update({c.job.hash: exc for c in copies})
    try:
        ctx.writer.flush()
    except Exception as exc:  # noqa: BLE001
        failed.update({job.hash: exc for job, _ in todo if job.hash not in failed})
    return failed


def _train_copies(ctx: Context, copies: list[Copy]) -> dict[str, BaseException]:
    h, T, start = ctx.hyper, ctx.hyper.iterations, copies[0].start
    if len(copies) == 1:  # one copy needs no stacking: its own model and optimizer, the plain layers
        return _train_alone(ctx, copies[0])
    net = stack([c.model for c in copies])
    optimizer = make_optimizer(net, h)
    if copies[0].optimizer.state_dict()["state"]:
        optimizer.load_state_dict(stack_optimizer_states([c.optimizer.state_dict() for c in copies]))
    masks = None
    if any(c.masks is not None for c in copies):
        params = dict(net.named_parameters())
        names = sorted({n for c in copies if c.masks for n in c.masks})
        masks = {n: torch.stack([c.masks[n] if c.masks and n in c.masks else
                                 torch.ones_like(params[n][0], dtype=torch.bool) for c in copies]) for n in names}
    for c in copies:
        ctx.log_device_params(c.run_id)
    fast = ctx.compiled(net)
    test = ctx.eval_batches("test")
    steps = train_group(fast, optimizer, [c.loader.train_batches(start, T) for c in copies], h, start, T,
                        _pauses(h, start, T, []), masks, ctx.device)
    snapshot = lambda c, it: {"model": copy_state(net, c),  # noqa: E731
                              "optimizer": copy_optimizer_state(optimizer.state_dict(), c), "iteration": it}
    errors = _loop(ctx, [c.job.hash for c in copies], [c.run_id for c in copies], steps, start, T,
                   lambda: evaluate_group(fast, test()), snapshot)
    final = evaluate_group(fast, test())
    out: dict[str, BaseException] = {}
    for c, copy in enumerate(copies):
        if errors[c] is not None:
            out[copy.job.hash] = FloatingPointError(errors[c])
            continue
        ctx.writer.submit(ctx.store.save_checkpoint, copy.job.hash, T, {"model": copy_state(net, c), "iteration": T})
        ctx.writer.submit(ctx.tracker.log_metrics, copy.run_id, [("final_test_accuracy", final[c]["accuracy"], T),
                                                                 ("final_test_error", final[c]["error"], T)])
        ctx.writer.submit(ctx.store.clear_resume, copy.job.hash)
    return out


def _train_alone(ctx: Context, copy: Copy) -> dict[str, BaseException]:
    """`_train_copies` for a group of one: the same loop on the plain network (bit-identical on CPU
    to the stacked path, tests/test_batched.py; and much faster on a GPU, bench/copies.py)."""
    h, T, start, model = ctx.hyper, ctx.hyper.iterations, copy.start, copy.model
    ctx.log_device_params(copy.run_id)
    fast = ctx.compiled(model)
    test = ctx.eval_batches("test")
    steps = train_group(fast, copy.optimizer, [copy.loader.train_batches(start, T)], h, start, T,
                        _pauses(h, start, T, []), copy.masks, ctx.device)
    errors = _loop(ctx, [copy.job.hash], [copy.run_id], steps, start, T, lambda: [evaluate(fast, test())],
                   lambda c, it: _state(model, copy.optimizer, it))
    if errors[0] is not None:
        return {copy.job.hash: FloatingPointError(errors[0])}
    final = evaluate(fast, test())
    ctx.writer.submit(ctx.store.save_checkpoint, copy.job.hash, T, {"model": _state(model, copy.optimizer, T)["model"],
                                                                     "iteration": T})
    ctx.writer.submit(ctx.tracker.log_metrics, copy.run_id, [("final_test_accuracy", final["accuracy"], T),
                                                             ("final_test_error", final["error"], T)])
    ctx.writer.submit(ctx.store.clear_resume, copy.job.hash)
    return {}


def run_branch(ctx: Context, job: Job, run_id: str) -> None:
    """One branch on its own (a group of one; see `run_branches`)."""
    failed = run_branches(ctx, [(job, run_id)])
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
        weights = ctx.store.load_checkpoint(f["source"], ctx.hyper.iterations)["model"]
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
    T = ctx.hyper.iterations
    state_a = ctx.store.load_checkpoint(a.hash, T, ctx.device)["model"]
    state_b = ctx.store.load_checkpoint(b.hash, T, ctx.device)["model"]
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
    # the curve's artifacts are drawn and written off the main path (flushed before FINISHED)
    ctx.writer.submit(ctx.tracker.log_dict, run_id, result, "curve.json")
    ctx.writer.submit(lambda: ctx.tracker.log_figure(run_id, _plot(result, job), "curve.png"))


def _plot(result: dict[str, Any], job: Job):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for split in ("test", "train"):
        if split in result:
            r = result[split]
            ax.plot(result["alphas"], [100 * e for e in r["error"]], marker="o", ms=3,
                    label=f"{split} (instability {100 * r['instability']:.2f}%)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("error (%)")
    ax.set_title(job.name, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


BODIES = {"train": run_train, "branch": run_branch, "interpolate": run_interpolate, "prune": run_prune}
