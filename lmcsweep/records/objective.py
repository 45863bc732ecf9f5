"""A search trial's objective, read back from the stored records of exactly its plan's jobs (never
from in-memory results): final test accuracy or error of its train or branch runs, or the
instability of its interpolate runs (`query.instability_records`) at a rewind point, or the
earliest rewind point from which on it is stable."""

from __future__ import annotations

import math
from typing import Any

from ..interpolate import STABLE_THRESHOLD
from ..plan.graph import Plan, same_study
from ..tracking import FINISHED, TAG, tag
from .query import instability_records


def objective_value(tracker: Any, plan: Plan) -> float:
    """The objective of a finished trial from the stored records of exactly its plan's jobs."""

    sweep, objective = plan.sweep, plan.sweep.search.objective
    hashes = {j.hash for j in plan.jobs}
    runs = [r for r in tracker.search(f"tags.`{TAG}sweep` = '{sweep.name}' and tags.`{TAG}trial` = '{plan.trial}' "
                                      f"and attributes.status = '{FINISHED}'")
            if tag(r, "job") in hashes and same_study(tag(r, "study"), plan.study)]
    control = None if objective.control == "none" else objective.control

    if objective.metric in ("accuracy", "error"):
        kind = "train" if objective.level is None else "branch"
        values = []
        for r in runs:
            if tag(r, "kind") != kind or "final_test_accuracy" not in r.data.metrics:
                continue
            if kind == "branch":
                if tag(r, "level") != str(objective.level) or tag(r, "control") != control:
                    continue
                if objective.rewind is not None and tag(r, "rewind") != str(plan.hyper.iterations_of(
                        objective.rewind)):
                    continue
            values.append(r.data.metrics["final_test_accuracy"])
        if not values:
            raise LookupError(f"objective {objective.metric}: no finished {kind} runs"
                              + (f" at level {objective.level}" if objective.level is not None else ""))
        accuracy = sum(values) / len(values)
        return accuracy if objective.metric == "accuracy" else 1.0 - accuracy

    ids = {r.info.run_id for r in runs if tag(r, "kind") == "interpolate"}
    records = [r for r in instability_records(tracker, sweep.name, plan.trial)
               if r["run_id"] in ids and r["split"] == objective.split and r["level"] == objective.level
               and r["control"] == control and r["trained"] is not False]  # collapsed pairs skipped
    field = "instability" if objective.metric == "earliest_stable" else objective.metric
    by_rewind: dict[int, list[float]] = {}
    for r in records:
        if r[field] is None:
            raise LookupError(f"objective {objective.metric}: interpolation run {r['run_id']} has no {field} "
                              "(run the sweep again: it computes the path metrics from the stored checkpoints)")
        by_rewind.setdefault(r["rewind"], []).append(r[field])
    if objective.metric == "earliest_stable":
        return earliest_stable(by_rewind)
    k = (plan.hyper.iterations_of(objective.rewind) if objective.rewind is not None
         else min(plan.hyper.iterations_of(s) for s in sweep.instability.points) if sweep.instability else 0)
    if k not in by_rewind:
        raise LookupError(f"objective {objective.metric}: no {objective.split} records of trained pairs at rewind {k}"
                          + (f", level {objective.level}" if objective.level is not None else ""))
    return sum(by_rewind[k]) / len(by_rewind[k])


def earliest_stable(by_rewind: dict[int, list[float]], threshold: float = STABLE_THRESHOLD) -> float:
    """The first rewind point k from which on the network is stable: the mean instability of the
    pairs is below `threshold` (2%, `STABLE_THRESHOLD`, unless an onset search sets its own) at k
    and at every later rewind point measured. inf if there is none (a point that dips below the
    threshold before an unstable one does not count)."""
    unstable = [k for k, v in by_rewind.items() if sum(v) / len(v) >= threshold]
    stable = [k for k in by_rewind if not any(u >= k for u in unstable)]
    return float(min(stable)) if stable else math.inf
