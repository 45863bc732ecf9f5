"""What each kind of job does: build the model, load its inputs from the store, call the core
(train / prune / interpolate), save its outputs and log to its MLflow run.

A body is called as ``body(ctx, job, run_id)`` with the `Context` of the job's plan, the `Job`
(its typed spec has everything it needs from its parents) and the MLflow run to record it in; it
returns nothing and raises on failure. Bodies are idempotent: a job killed mid-way resumes from its
last resume checkpoint and ends bit-identical to an uninterrupted run (on CPU). `KINDS` is the one
table of job kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import plots, prune
from ..plan.specs import BranchSpec, Job, PruneSpec, TrainSpec
from ..store import sidecar
from ..train import evaluate, make_optimizer, train
from .context import Context
from . import paths, tickets
from .together import kernel_threads
from .training import (clone, ensure_checkpoint, loop, mark_trained, masked_optimizer_state, pauses, resume,
                       save_final, train_state)


def run_train(ctx: Context, job: Job, run_id: str) -> None:
    """The dense network of a replicate: init -> T, checkpoints at every rewind point."""
    spec: TrainSpec = job.spec
    seeds = spec.seeds
    with kernel_threads(ctx.hyper.cpu_threads, ctx.device, ctx.hyper.deterministic):
        model = ctx.model(seeds["init"])
        optimizer = make_optimizer(model, ctx.hyper)
        start, history = resume(ctx, job, run_id, model, optimizer, 0) or (0, [])
        save_at = sorted(set(spec.save_at) | {0})
        ctx.log_device_params(run_id)
        if start == 0:
            ctx.writer.submit(ctx.store.save_checkpoint, job.hash, 0, train_state(model, optimizer, 0))
        loader = ctx.loader("train", seeds["data_order"], seeds["augmentation"])
        T = ctx.hyper.iterations
        fast = ctx.compiled(model)
        save = [k for k in save_at if k > start]
        steps = train(fast, optimizer, loader.train_batches(start, T), ctx.hyper, start, T,
                      pauses(ctx.hyper, 0, T, save), None, ctx.device, seeds["augmentation"],
                      windows=pauses(ctx.hyper, 0, T, []))  # the loss curve: the job's, whatever the rewind points
        logged = loop(ctx, job.hash, run_id, steps, start, T, lambda: ctx.test_metrics(fast),
                      lambda it: train_state(model, optimizer, it),
                      lambda it: ctx.writer.submit(ctx.store.save_checkpoint, job.hash, it,
                                                   train_state(model, optimizer, it)),
                      tuple(save), history)
        save_final(ctx, job, run_id, T, train_state(model, optimizer, T))
        m = ctx.test_metrics(fast)
    ctx.writer.submit(ctx.tracker.log_metrics, run_id,
                      [("final_test_accuracy", m["accuracy"], T), ("final_test_error", m["error"], T)])
    mark_trained(ctx, job, run_id, T, logged)
    ctx.writer.flush()


@dataclass
class Copy:
    """A branch ready to train: its model and optimizer at `start`, its mask, its loader, and the
    metrics of the runs before a resume."""

    job: Job
    run_id: str
    model: torch.nn.Module
    optimizer: Any
    start: int
    masks: prune.Masks | None
    loader: Any
    history: list[tuple[str, float, int]]


def prepare_branch(ctx: Context, job: Job, run_id: str) -> Copy:
    """A copy from checkpoint k (under a mask or control), or from its own resume checkpoint."""
    spec: BranchSpec = job.spec
    k = spec.rewind
    masks = ctx.store.load_masks(spec.mask) if spec.mask else None
    if spec.control == "random_prune":
        masks = prune.random_prune(masks, spec.control_seed)
    model = ctx.model(spec.init_seed)
    optimizer = make_optimizer(model, ctx.hyper)
    resumed = resume(ctx, job, run_id, model, optimizer, k)
    start, history = resumed or (k, [])
    if resumed is None:
        state = ensure_checkpoint(ctx, spec.train, spec.parent_seeds, k)
        if spec.control != "random_reinit" and spec.init is None:  # (its own init: the weights it was built with)
            model.load_state_dict(state["model"])
            if spec.optimizer == "continue":  # its own tensors: load_state_dict keeps the ones it is given
                optimizer.load_state_dict(clone(state["optimizer"]))
        if masks is not None:
            prune.apply_masks(model, masks)
            masked_optimizer_state(optimizer, model, masks)
    if masks is not None:
        masks = {n: m.to(ctx.device) for n, m in masks.items()}
        ctx.writer.submit(ctx.tracker.log_metrics, run_id, [("density", prune.density(masks), k)])
    loader = ctx.loader("train", spec.seeds["data_order"], spec.seeds["augmentation"])
    return Copy(job, run_id, model, optimizer, start, masks, loader, history)


def run_branch(ctx: Context, job: Job, run_id: str) -> None:
    """One copy from its start to its end (T, or k + T with the schedule restarted at k): the
    training loop on its plain network, test metrics on the evaluation cadence, resume checkpoints,
    then its final checkpoint and metrics. Iterations are global throughout (data order,
    augmentation, cadences, checkpoint names); only the learning rate reads them shifted by k.
    A copy's result does not depend on what trains beside it (tests/test_batched.py)."""
    with kernel_threads(ctx.hyper.cpu_threads, ctx.device, ctx.hyper.deterministic):
        copy = prepare_branch(ctx, job, run_id)
        spec: BranchSpec = job.spec
        h, start, model, end = ctx.hyper, copy.start, copy.model, spec.end
        ctx.log_device_params(run_id)
        fast = ctx.compiled(model)
        test = ctx.eval_batches("test")
        steps = train(fast, copy.optimizer, copy.loader.train_batches(start, end), h, start, end,
                      pauses(h, spec.rewind, end, []), copy.masks, ctx.device, copy.loader.aug_seed,
                      spec.lr_offset)
        logged = loop(ctx, job.hash, run_id, steps, start, end, lambda: evaluate(fast, test()),
                      lambda it: train_state(model, copy.optimizer, it), history=copy.history)
        final = evaluate(fast, test())
    save_final(ctx, job, run_id, end, {"model": clone(model.state_dict()), "iteration": end})
    ctx.writer.submit(ctx.tracker.log_metrics, run_id, [("final_test_accuracy", final["accuracy"], end),
                                                        ("final_test_error", final["error"], end)])
    mark_trained(ctx, job, run_id, end, logged)


def run_prune(ctx: Context, job: Job, run_id: str) -> None:
    """The mask of an IMP level: global magnitude pruning of the previous level's trained subnetwork."""
    spec: PruneSpec = job.spec
    model = ctx.model(0)
    if spec.source is None:  # level 0: the dense network
        masks = prune.full_masks(model, prune.prunable_for(model, spec.exempt))
    else:
        weights = ctx.store.load_checkpoint(spec.source, spec.source_end)["model"]
        previous = ctx.store.load_masks(spec.previous)
        if spec.style == "one_shot":
            masks = prune.prune_to_density(weights, previous, spec.target_density)
        else:
            masks = prune.magnitude_prune(weights, previous, spec.fraction)
    masks = {n: m.cpu() for n, m in masks.items()}
    path = ctx.store.save_masks(job.hash, masks)
    ctx.tracker.log_artifact(run_id, path, "mask")
    ctx.tracker.set_tags(run_id, {"mask_sha256": sidecar(path).read_text().split()[0]})
    density = prune.density(masks)
    if spec.parent_seeds or ctx.store.has_checkpoint(spec.train, spec.rewind):  # the level's ticket (`export`)
        ticket = tickets.ticket(ctx, job.hash, spec)
        ctx.tracker.log_artifact(run_id, ctx.store.save_ticket(job.hash, ticket), "ticket")
    ctx.tracker.log_metrics(run_id, [("density", density, 0)] +
                            [(f"density.{n}", d, 0) for n, d in prune.layer_densities(masks).items()])


def run_interpolate(ctx: Context, job: Job, run_id: str) -> None:
    """Error and loss along the straight path between two branches, on each split; the barriers,
    the endpoints' disagreement and distance (`paths.measure`)."""
    result, metrics = paths.measure(ctx, job.spec)
    ctx.writer.submit(ctx.tracker.log_metrics, run_id, metrics)
    ctx.writer.submit(ctx.tracker.log_dict, run_id, result, "curve.json")
    # drawn by whoever logs it (the tracking process in `lmcsweep run`), off the training path
    t = job.tags
    title = ", ".join([f"{ctx.sweep.name}: replicate {t['replicate']}", f"k={t['rewind']}"]
                      + ([f"level {t['level']}"] if t.get("level") is not None else [])
                      + ([t["control"]] if t.get("control") else []) + [f"copies {t['pair']}"])
    ctx.writer.submit(ctx.tracker.log_plot, run_id, plots.error_curve, (result, title), "curve.png")


@dataclass(frozen=True)
class Kind:
    """One kind of job: its body, whether it trains a network (the networks of a wave train side by
    side: `executors.pool`), and the kind of its MLflow run."""

    body: Callable[[Context, Job, str], None]
    trains: bool
    run_kind: str


KINDS: dict[str, Kind] = {
    "train": Kind(run_train, trains=True, run_kind="train"),
    "branch": Kind(run_branch, trains=True, run_kind="branch"),
    "prune": Kind(run_prune, trains=False, run_kind="level"),
    "interpolate": Kind(run_interpolate, trains=False, run_kind="interpolate"),
}
