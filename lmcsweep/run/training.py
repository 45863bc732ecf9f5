"""The machinery the training bodies share (`bodies`): the loop driver with its pauses, metrics
and resume checkpoints, resuming a killed job, replaying a dense network to a rewind point that was
not saved, and state dicts cloned for background writes.

A job killed mid-way resumes from its last resume checkpoint and ends bit-identical to an
uninterrupted run (on CPU): the pauses, and so the loss windows and curves, are the same.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .. import prune
from ..config import Hyper
from ..optim import Fused
from ..plan.specs import Job
from ..store import Damaged, checksum, serialize
from ..train import make_optimizer, train
from .context import Context
from .together import kernel_threads


def pauses(h: Hyper, origin: int, end: int, save_at: list[int]) -> set[int]:
    """Where the training of a job from `origin` to `end` pauses: progress ticks, rewind points,
    evaluation and checkpoint cadence. The same set whether or not the job resumed midway (resume
    points are pauses), so a resumed job's mean-loss windows, and curve, are the uninterrupted one's."""
    tick = max(1, min(h.eval_every, (end - origin) // 50 or 1))
    pauses = set(range(origin + tick, end, tick)) | set(save_at)
    return pauses | set(range(0, end, h.eval_every)) | set(range(0, end, h.checkpoint_every))


def loop(ctx: Context, name: str, run_id: str, steps, start: int, end: int,
         evaluate_now: Callable[[], dict[str, float]], snapshot: Callable[[int], dict[str, Any]],
         on_save: Callable[[int], None] = lambda it: None, save_at: tuple[int, ...] = (),
         history: list[tuple[str, float, int]] | None = None) -> list[tuple[str, float, int]]:
    """Drive `steps` (a `train` generator) from start to end: progress, a finite-loss check, test
    metrics every eval_every, resume checkpoints (`snapshot(it)`) every checkpoint_every. Metrics
    and checkpoints go through ctx.writer, off the training path. A resume checkpoint also holds
    every metric logged up to it (`history`: those of the runs before a resume), so a resumed
    run logs its whole curve however much of it reached the killed run. Returns every metric
    logged (`history` included), for `mark_trained`."""
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


def save_final(ctx: Context, job: Job, run_id: str, it: int, state: dict[str, Any]) -> None:
    """Write a job's final checkpoint (in the background) and tag its run with the checksum
    (``checkpoint_sha256``), the one `lmcsweep verify` and every read compare the file with."""
    data = serialize(state)
    ctx.writer.submit(ctx.store.write_checkpoint, job.hash, it, data)
    ctx.writer.submit(ctx.tracker.set_tags, run_id, {"checkpoint_sha256": checksum(data)})


def train_state(model, optimizer, it: int) -> dict[str, Any]:
    """Weights, optimizer state and iteration, cloned (for a background write)."""
    return {"model": clone(model.state_dict()), "optimizer": clone(optimizer.state_dict()), "iteration": it}


def mark_trained(ctx: Context, job: Job, run_id: str, end: int, logged: list[tuple[str, float, int]]) -> None:
    """After a job's final checkpoint (at `end`): its resume record becomes "trained to the end" (no
    weights: they are the final checkpoint's), so a kill before the runner marks the run FINISHED
    (copies of a wave are marked together, when the last one ends) costs no training: the next run
    takes the final checkpoint and the curve from here (`resume`). The runner removes it once the
    run is FINISHED."""
    ctx.writer.submit(ctx.store.save_resume, job.hash, {"iteration": end, "final": True, "run_id": run_id,
                                                        "metrics": list(logged)})


def resume(ctx: Context, job: Job, run_id: str, model: torch.nn.Module, optimizer: Fused,
           origin: int) -> tuple[int, list[tuple[str, float, int]]] | None:
    """If a killed run left `job` a resume checkpoint: `model` and `optimizer` as they were there,
    and (resume iteration, metrics logged up to it): the resume checkpoint's, or, where the killed
    run had trained to the end (`mark_trained`), the final checkpoint's. The new run is tagged
    `resumed_from` and gets those metrics again, so its curves are whole (a resume checkpoint older
    than this holds none: that run's curve starts at the resume point; the KILLED run has the
    rest). None otherwise."""
    resume = ctx.store.load_resume(job.hash, ctx.device)
    if resume is None:
        return None
    if resume.get("final"):  # trained to the end by a run killed before it was marked FINISHED
        try:
            resume = {**ctx.store.load_checkpoint(job.hash, resume["iteration"], ctx.device), **resume}
        except (Damaged, FileNotFoundError):  # its final checkpoint is not good: train again
            ctx.store.clear_resume(job.hash)
            return None
    model.load_state_dict(resume["model"])
    if "optimizer" in resume:  # a copy's final checkpoint holds its weights only (no step is left)
        optimizer.load_state_dict(resume["optimizer"])
    start, history = resume["iteration"], resume.get("metrics", [])
    ctx.progress(start - origin)
    ctx.writer.submit(ctx.tracker.set_tags, run_id, {"resumed_from": start})
    if history:
        ctx.writer.submit(ctx.tracker.log_metrics, run_id, history)
    return start, history


def clone(obj: Any) -> Any:
    """A deep copy of the tensors of a (nested) state dict, so it can be written in the background."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone(v) for v in obj]
    return obj


def ensure_checkpoint(ctx: Context, train_job: str, seeds: dict[str, int], k: int) -> dict[str, Any]:
    """The dense job `train_job`'s state at k (its `seeds`: init, data_order, augmentation); replayed
    from its nearest earlier checkpoint if k was not saved."""
    if ctx.store.has_checkpoint(train_job, k):
        return ctx.store.load_checkpoint(train_job, k, ctx.device)
    saved = [it for it in ctx.store.checkpoint_iterations(train_job) if it < k]
    if not saved:
        raise FileNotFoundError(f"job {train_job} has no checkpoint to replay iteration {k} from")
    state = ctx.store.load_checkpoint(train_job, saved[-1], ctx.device)
    model = ctx.model(seeds["init"])
    model.load_state_dict(state["model"])
    optimizer = make_optimizer(model, ctx.hyper)
    optimizer.load_state_dict(state["optimizer"])
    loader = ctx.loader("train", seeds["data_order"], seeds["augmentation"])
    with kernel_threads(ctx.hyper.cpu_threads, ctx.device, ctx.hyper.deterministic):  # the same kernels as the run it replays
        for _ in train(model, optimizer, loader.train_batches(saved[-1], k), ctx.hyper, saved[-1], k, (), None,
                       ctx.device, seeds["augmentation"]):
            pass
    out = train_state(model, optimizer, k)
    ctx.store.save_checkpoint(train_job, k, out)
    return out


def masked_optimizer_state(optimizer, model, masks: prune.Masks) -> None:
    """Zero the optimizer's per-weight state (momentum, Adam moments) of pruned weights."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        for value in optimizer.state.get(params[name], {}).values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask.to(value.dtype))
