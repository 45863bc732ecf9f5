"""What an interpolation measures along its path, for every split: error and loss at each alpha,
the error barrier (instability), the loss barrier, the barriers against the straight line between
the end values, the endpoints' disagreement, the distance and cosine similarity of their weights,
and whether both ends are trained networks (`trained`: neither at or near chance, no non-finite
loss; a pair that is not is never stable).

`measure` is what an interpolation job computes; `backfill` gives interpolation runs finished before
these metrics existed the ones they lack, from their stored checkpoints (nothing is retrained, the
job keeps its hash and its error curve, which is computed again bit for bit the same)."""

from __future__ import annotations

from typing import Any

from .. import align
from .. import interpolate as interp
from ..plan.specs import InterpolateSpec, Job
from ..tracking import FINISHED, tag
from .context import Context

# the metric whose presence says an interpolation run has the path metrics (one per split)
MARK = "loss_barrier"


def measure(ctx: Context, spec: InterpolateSpec) -> tuple[dict[str, Any], list[tuple[str, float, int]]]:
    """The interpolation of `spec`'s pair: curve.json's content, and the metrics of its run."""
    (a, b), (end_a, end_b) = spec.pair, spec.ends
    state_a = ctx.store.load_checkpoint(a, end_a, ctx.device)["model"]
    state_b = ctx.store.load_checkpoint(b, end_b, ctx.device)["model"]
    model = ctx.model(0)
    points = interp.alphas(spec.alphas)
    seeds = spec.parent_seeds
    bn_loader = ctx.loader("train", seeds["data_order"], seeds["augmentation"])
    bn_batches = lambda: bn_loader.train_batches(0, spec.bn_batches)  # noqa: E731
    splits = {split: ctx.eval_batches(split, spec.train_examples if split == "train" else None)
              for split in spec.splits}
    curves = interp.path_curves(model, state_a, state_b, points, splits, bn=spec.bn, bn_batches=bn_batches)
    ends = {split: interp.endpoint_stats(model, state_a, state_b, splits[split]) for split in spec.splits}
    trained = not any(interp.degenerate(e, ctx.data.num_classes) for e in ends.values())
    distance = interp.weight_distance(model, state_a, state_b)
    result: dict[str, Any] = {"alphas": points, "bn": spec.bn, "trained": trained, **distance}
    metrics: list[tuple[str, float, int]] = [("trained", float(trained), 0)]
    metrics += [(key, value, 0) for key, value in distance.items()]
    for split in spec.splits:
        error, loss = curves[split]["error"], curves[split]["loss"]
        stats = {**interp.barrier(error), **interp.path_barriers(points, error, loss),
                 "disagreement": ends[split]["disagreement"]}
        stats["stable"] = bool(stats["stable"]) and trained  # a collapsed pair is never stable
        result[split] = {"error": error, "loss": loss, **stats,
                         "ends": {k: v for k, v in ends[split].items() if k != "disagreement"}}
        metrics += [(f"error_{split}", e, i) for i, e in enumerate(error)]
        # the same curve against alpha: MLflow's steps are integers, so step = round(1000 * alpha)
        metrics += [(f"error_{split}_vs_alpha", e, round(1000 * a)) for a, e in zip(points, error)]
        metrics += [(f"loss_{split}", v, i) for i, v in enumerate(loss)]
        metrics += [(f"{key}_{split}", float(value), 0) for key, value in stats.items()]
    metrics += [("alpha", a, i) for i, a in enumerate(points)]  # alpha of step i: an x axis for error_<split>
    if spec.align != "none":
        aligned, more = measure_aligned(spec, model, state_a, state_b, points, splits, bn_loader, bn_batches,
                                        trained)
        result["aligned"] = aligned
        metrics += more
    return result, metrics


def measure_aligned(spec: InterpolateSpec, model, state_a, state_b, points, splits, loader, bn_batches,
                    trained: bool) -> tuple[dict[str, Any], list[tuple[str, float, int]]]:
    """The same path with copy B's hidden units permuted to match copy A (`align.align`, checked to
    compute what B did): its curves and barriers under `aligned_` names, and what the alignment did.
    Its batches are the first `align_batches` of the replicate's training order (`loader`: the dense
    network's data-order and augmentation seeds, recorded)."""
    seeds = spec.parent_seeds
    batches = [x.clone() for x, _ in loader.train_batches(0, spec.align_batches)]
    label = f"(pair {spec.pair[0]} / {spec.pair[1]})"
    permuted, info = align.align(model, state_a, state_b, spec.align, batches, seed=seeds["data_order"], label=label)
    curves = interp.path_curves(model, state_a, permuted, points, splits, bn=spec.bn, bn_batches=bn_batches)
    distance = interp.weight_distance(model, state_a, permuted)
    info.update(batches=len(batches), seed=seeds["data_order"], augmentation_seed=seeds["augmentation"])
    result: dict[str, Any] = {**info, **distance}
    metrics = [(f"aligned_{key}", value, 0) for key, value in distance.items()]
    metrics += [(f"align_{key}", float(info[key]), 0) for key in ("moved", "check_difference", "rounds") if key in info]
    for split in splits:
        error, loss = curves[split]["error"], curves[split]["loss"]
        stats = {**interp.barrier(error), **interp.path_barriers(points, error, loss)}
        stats["stable"] = bool(stats["stable"]) and trained
        result[split] = {"error": error, "loss": loss, **stats}
        metrics += [(f"aligned_error_{split}", e, i) for i, e in enumerate(error)]
        metrics += [(f"aligned_loss_{split}", v, i) for i, v in enumerate(loss)]
        metrics += [(f"aligned_{key}_{split}", float(value), 0) for key, value in stats.items()]
    return result, metrics


def lacking(run: Any, spec: InterpolateSpec) -> bool:
    """Whether a finished interpolation run predates the path metrics."""
    return any(f"{MARK}_{split}" not in run.data.metrics for split in spec.splits)


def backfill(ctx: Context, jobs: list[Job], sweep: str, trial: int | None = None) -> int:
    """Logs the path metrics (and a new curve.json) on every FINISHED run of `sweep` (its `trial`)
    of the interpolation jobs `jobs` that lacks them, computed from the stored checkpoints of the
    job's pair; each job is measured once however many runs stand for it. Only the new metrics are
    added (error curve, instability and `stable` of a trained pair are the same numbers). Returns how
    many runs were completed; `backfilled` (1) is logged on each."""
    wanted = {j.hash: j for j in jobs if j.kind == "interpolate"}
    if not wanted:
        return 0
    measured: dict[str, tuple[dict[str, Any], list[tuple[str, float, int]]]] = {}
    done = 0
    for run in ctx.tracker.runs_of_sweep(sweep, kind="interpolate", status=FINISHED):
        job = wanted.get(tag(run, "job"))
        if job is None or tag(run, "trial") != (None if trial is None else str(trial)) or not lacking(run, job.spec):
            continue
        if job.hash not in measured:
            measured[job.hash] = measure(ctx, job.spec)
        result, metrics = measured[job.hash]
        old = {k: v for k, v in run.data.metrics.items()}
        new = [m for m in metrics if m[0] not in old or m[0].startswith("stable_")]
        ctx.tracker.log_metrics(run.info.run_id, new + [("backfilled", 1.0, 0)])
        ctx.tracker.log_dict(run.info.run_id, result, "curve.json")
        done += 1
    return done
