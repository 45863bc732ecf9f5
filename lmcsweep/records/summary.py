"""Summary metrics where a researcher looks first in the MLflow UI, logged at the end of a sweep run
from the stored records (`query.instability_records`):

- each replicate's ``train`` run: ``mean_instability_<split>``, the mean over its pairs of copies,
  with step = the rewind point k;
- the sweep run (or each trial's run): ``mean_instability_<split>``, the mean of those over
  replicates, with step = k, and ``stable_fraction_<split>`` (the share of pairs below 2%).

One key for both, so MLflow's chart view draws instability against k in one chart: a line per
replicate and the sweep's mean.

Only the dense instability analysis is summarised (IMP levels carry matching: `query.log_matching`).
Values are rounded to 12 decimals (float noise of the means, nothing measured); a value already
logged at that step is not logged again, so running a finished sweep again adds nothing.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..plan.graph import same_study
from ..tracking import FINISHED, Tracker, tag
from .query import Current, instability_records


def summary_metrics(records: list[dict[str, Any]]) -> tuple[dict[tuple, list], dict[Any, list]]:
    """(trial, replicate) -> [(key, value, k)] for replicate runs, and trial -> [(key, value, k)]
    for the sweep run (trial None) or trial runs, from dense instability records."""
    pairs: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r["level"] is None and r["control"] is None:
            pairs.setdefault((r["trial"], r["replicate"], r["rewind"], r["split"]), []).append(r)
    per_replicate: dict[tuple, list] = {}
    across: dict[tuple, list[float]] = {}
    stable: dict[tuple, list[bool]] = {}
    for (trial, replicate, k, split), rs in sorted(pairs.items(), key=lambda kv: str(kv[0])):
        mean = statistics.fmean(r["instability"] for r in rs)
        per_replicate.setdefault((trial, replicate), []).append((f"mean_instability_{split}", round(mean, 12), k))
        across.setdefault((trial, k, split), []).append(mean)
        stable.setdefault((trial, k, split), []).extend(r["stable"] for r in rs)
    per_sweep: dict[Any, list] = {}
    for (trial, k, split), means in sorted(across.items(), key=lambda kv: str(kv[0])):
        share = sum(stable[(trial, k, split)]) / len(stable[(trial, k, split)])
        per_sweep.setdefault(trial, []).extend([(f"mean_instability_{split}", round(statistics.fmean(means), 12), k),
                                                (f"stable_fraction_{split}", round(share, 12), k)])
    return per_replicate, per_sweep


def log_summaries(tracker: Tracker, sweep: str, current: Current | None, sweep_run: str) -> int:
    """Logs the summary metrics of `sweep` (its `current` definition) on its replicate runs and on
    its sweep run (or trial runs). Returns how many runs were written to."""
    records = instability_records(tracker, sweep, jobs=None if current is None else {sweep: current})
    per_replicate, per_sweep = summary_metrics(records)
    if not per_replicate:
        return 0
    targets: dict[tuple, str] = {}
    for run in tracker.runs_of_sweep(sweep, status=FINISHED):
        kind, study = tag(run, "kind"), tag(run, "study")
        if current is not None and not same_study(study, current.study):
            continue
        trial = None if tag(run, "trial") is None else int(tag(run, "trial"))
        if kind == "train" and (current is None or tag(run, "job") in current.jobs):
            targets.setdefault(("replicate", trial, int(tag(run, "replicate"))), run.info.run_id)
        elif kind == "trial":
            targets.setdefault(("sweep", trial), run.info.run_id)
    targets[("sweep", None)] = sweep_run
    written = 0
    for where, metrics in [*((("replicate", *key), m) for key, m in per_replicate.items()),
                           *((("sweep", trial), m) for trial, m in per_sweep.items())]:
        run_id = targets.get(where)
        if run_id is None:
            continue
        logged = {(key, step): value for key, value, step in tracker.metric_history(run_id)}
        new = [m for m in metrics if logged.get((m[0], m[2])) != m[1]]
        if new:
            tracker.log_metrics(run_id, new)
            written += 1
    return written
