"""The onset search (`instability.rewind: {search: onset, grid: [...], threshold, split}`): the
earliest rewind point k of a grid from which copies are stable, found by bisection instead of
analysing every k.

A *unit* is what has its own onset: a replicate's dense network (level None) and, with
imp.instability, each IMP level >= 1 of it (level 0 is the dense network: its onset is the
replicate's). The analysis of a unit at k is its interpolation jobs at k (control none); k is
stable when every pair is trained and their mean instability on `split` is below `threshold`.

The search is planned round by round (`run_onset`): the store is surveyed for every analysis of
the grid already finished (in this sweep or any other: their hashes are known before anything
runs), those narrow each unit's bracket for free, and the plan of the round holds them (recorded
as reused) and the next probe of every unit still open: the middle of its bracket. Its jobs run
(the probes of all units side by side), and the next round begins, until every bracket is closed.
A killed search resumes where it was: the survey finds what finished, a half-trained probe resumes
from its checkpoints.

Bisection assumes stability is monotone in k. The bracket reported is (the latest unstable k
measured, the first stable k measured after it): "stable from k on" among the points measured, as
the `earliest_stable` objective reads it. A stable k measured before an unstable one (possible
when analyses were reused, or when the truth is not monotone) is listed as `non_monotone`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from ..config import SweepConfig
from ..plan.build import Probes, build_plan
from ..plan.graph import Plan
from ..run.throughput import progress_for
from ..tracking import FINISHED, TAG, Tracker, tag

Unit = tuple[int, int | None]  # (replicate, IMP level or None: the dense network)


@dataclass
class Bracket:
    last_unstable: int | None      # the latest unstable k measured (None: none)
    first_stable: int | None       # the first stable k measured after it (None: none, so far)
    next: int | None               # the next probe (None: the bracket is closed)
    non_monotone: list[int] = field(default_factory=list)  # stable k measured before an unstable one


def bracket(grid: list[int], known: dict[int, bool]) -> Bracket:
    """The bracket of a sorted `grid` given the points measured so far (k -> stable), and the
    next probe: the middle of the points between its ends, or None when they are neighbours."""
    unstable = [i for i, k in enumerate(grid) if known.get(k) is False]
    lo = max(unstable, default=-1)
    hi = min((i for i, k in enumerate(grid) if known.get(k) is True and i > lo), default=len(grid))
    return Bracket(last_unstable=grid[lo] if lo >= 0 else None, first_stable=grid[hi] if hi < len(grid) else None,
                   next=grid[(lo + hi) // 2] if hi - lo > 1 else None,
                   non_monotone=[k for i, k in enumerate(grid) if known.get(k) is True and i < lo])


@dataclass
class UnitState:
    jobs: dict[int, list[Any]]                                  # k -> its interpolation jobs
    known: dict[int, bool] = field(default_factory=dict)        # k -> stable, of finished analyses
    values: dict[int, float] = field(default_factory=dict)      # k -> mean instability
    density: float = 1.0
    twins: dict[str, str] = field(default_factory=dict)         # dense job -> its IMP level-0 twin
    via_twin: set[int] = field(default_factory=set)             # k known from level-0 twins only

    def bracket(self) -> Bracket:
        return bracket(sorted(self.jobs), self.known)


def survey(sweep: SweepConfig, tracker: Tracker) -> dict[Unit, UnitState]:
    """Every unit of the sweep with the analyses of its grid finished anywhere in the store."""
    onset = sweep.instability.onset
    units: dict[Unit, UnitState] = {}
    twins: dict[str, str] = {}  # a dense interpolation -> its IMP level-0 twin (the same numbers)
    for job in build_plan(sweep).jobs:  # the whole grid: the hashes of every analysis it could do
        level = job.tags.get("level")
        if job.kind == "interpolate" and level == 0 and job.same_as:
            twins[job.same_as] = job.hash
        if job.kind != "interpolate" or job.tags.get("control") is not None or level == 0:
            continue
        unit = units.setdefault((job.tags["replicate"], level), UnitState(jobs={}, twins=twins))
        unit.jobs.setdefault(job.tags["rewind"], []).append(job)
        unit.density = job.tags.get("density", 1.0)
    hashes = [h for u in units.values() for jobs in u.jobs.values() for j in jobs
              for h in (j.hash, j.same_as, twins.get(j.hash)) if h]
    finished = tracker.finished_jobs(hashes)
    for unit in units.values():
        for k, jobs in unit.jobs.items():
            runs = [finished.get(j.hash) or finished.get(j.same_as) or finished.get(twins.get(j.hash, "")) for j in jobs]
            if any(r is None for r in runs):
                continue
            if any(j.hash not in finished and j.same_as not in finished for j in jobs):
                unit.via_twin.add(k)  # measured by IMP level 0: the runner would not reuse it for the dense job
            metrics = [r.data.metrics for r in runs]
            values = [m.get(f"instability_{onset.split}") for m in metrics]
            if any(v is None for v in values):
                continue
            mean = sum(values) / len(values)
            unit.values[k] = round(mean, 12)
            unit.known[k] = mean < onset.threshold and all(m.get("trained", 1.0) != 0.0 for m in metrics)
    return units


def probes_of(units: dict[Unit, UnitState]) -> tuple[Probes, bool]:
    """The rewind points each unit's plan holds (every finished one, and its next probe), and
    whether any unit has a probe left."""
    probes, open_ = {}, False
    for key, unit in units.items():
        nxt = unit.bracket().next
        probes[key] = (set(unit.known) - unit.via_twin) | ({nxt} if nxt is not None else set())
        open_ = open_ or nxt is not None
    return probes, open_


def run_onset(sweep: SweepConfig, runner: Any, experiment_id: str, outcome: Any, progress: bool,
              run_batch: Any = None) -> Plan:
    """Run an onset-search sweep round by round until every unit's bracket is closed (or a job
    fails); record each unit's bracket and cost. Each round runs in this process, or through
    `run_batch` (the workers' queue, `cluster`). Returns the last round's plan."""
    while True:
        units = survey(sweep, runner.tracker)
        probes, open_ = probes_of(units)
        plan = build_plan(sweep, probes=probes)
        if run_batch is not None:
            run_batch([(plan, outcome.sweep_run)], outcome)
            if not open_ or any(j.hash in outcome.failed for j in plan.jobs):
                break
            continue
        shown = progress_for(runner.tracker, [plan], set(runner.finished_in_tree(plan)), sweep.name, progress)
        try:
            runner.run_plan(plan, experiment_id, outcome.sweep_run, outcome, shown)
        finally:
            shown.close()
        hashes = {j.hash for j in plan.jobs}
        if not open_ or any(h in hashes for h in [*outcome.failed, *outcome.blocked]):
            break
    moved = set(outcome.computed) | set(outcome.reused)  # a job skipped in a round, then run in a later one: once
    outcome.skipped = [h for h in dict.fromkeys(outcome.skipped) if h not in moved]
    record_onset(sweep, runner.tracker, survey(sweep, runner.tracker), plan, outcome.sweep_run)
    return plan


def unit_records(sweep: SweepConfig, tracker: Tracker, units: dict[Unit, UnitState]) -> list[dict[str, Any]]:
    """One record per unit: its bracket, what it measured, and the analyses it cost in this sweep
    (`new`: computed in this sweep's tree; `reused`: found finished elsewhere in the store)."""
    onset = sweep.instability.onset
    origin = {tag(r, "job"): tag(r, "origin") for r in tracker.runs_of_sweep(sweep.name, kind="interpolate",
                                                                            status=FINISHED)
              if tag(r, "trial") is None}
    out = []
    for (replicate, level), unit in sorted(units.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        b = unit.bracket()
        new = [k for k in unit.known if any(origin.get(h) == "computed" for j in unit.jobs[k]
                                            for h in (j.hash, unit.twins.get(j.hash)))]
        state = ("open" if b.next is not None else "found" if b.first_stable is not None and b.last_unstable is not None
                 else "all_stable" if b.first_stable is not None else "none_stable")
        out.append({"sweep": sweep.name, "replicate": replicate, "level": level, "density": unit.density,
                    "split": onset.split, "threshold": onset.threshold, "last_unstable": b.last_unstable,
                    "first_stable": b.first_stable, "state": state, "non_monotone": b.non_monotone,
                    "analyses_new": len(new), "analyses_reused": len(unit.known) - len(new),
                    "grid_points": len(unit.jobs), "grid": sorted(unit.jobs),
                    "measured": {str(k): unit.values[k] for k in sorted(unit.values)}})
    return out


def record_onset(sweep: SweepConfig, tracker: Tracker, units: dict[Unit, UnitState], plan: Plan,
                 sweep_run: str) -> list[dict[str, Any]]:
    """Each replicate's records on its train run (artifact ``onset.json``; tag ``lmcsweep.onset``,
    one ``dense:found:K level 1:...`` per unit, state and first stable k; metrics
    onset_first_stable, onset_last_unstable, onset_analyses_new, onset_analyses_reused,
    onset_grid_points; for IMP levels the same with ``_imp`` appended and step = level) and the
    totals on the sweep run."""
    records = unit_records(sweep, tracker, units)
    trains = {j.tags["replicate"]: j.hash for j in plan.jobs if j.kind == "train"}
    runs = {tag(r, "job"): r.info.run_id for r in tracker.runs_of_sweep(sweep.name, kind="train", status=FINISHED)
            if tag(r, "trial") is None}
    for replicate, job in trains.items():
        mine = [r for r in records if r["replicate"] == replicate]
        if job not in runs or not mine:
            continue
        metrics = []
        for r in mine:
            suffix, step = ("", 0) if r["level"] is None else ("_imp", r["level"])
            metrics += [(f"onset_{key}{suffix}", float(r[key]), step) for key in
                        ("first_stable", "last_unstable", "analyses_new", "analyses_reused", "grid_points")
                        if r[key] is not None]
        tracker.log_dict(runs[job], mine, "onset.json")
        tracker.set_tags(runs[job], {"onset": " ".join(f"{'dense' if r['level'] is None else 'level ' + str(r['level'])}:"
                                                        f"{r['state']}:{r['first_stable']}" for r in mine)[:5000]})
        tracker.log_metrics(runs[job], metrics)
    totals = {key: sum(r[key] for r in records) for key in ("analyses_new", "analyses_reused", "grid_points")}
    tracker.log_metrics(sweep_run, [(f"onset_{key}", float(v), 0) for key, v in totals.items()])
    return records


def onset_records(tracker: Tracker, sweep: str | None = None, jobs: dict[str, Any] | None = None) -> list[dict]:
    """The onset records (`unit_records`) every replicate's train run holds (of the sweeps' current
    definitions, `jobs` as in `query.instability_records`), one per unit, for `lmcsweep query`."""
    out = []
    for name in ([sweep] if sweep else sorted({tag(r, "sweep") for r in tracker.search(
            f"tags.`{TAG}kind` = 'train' and attributes.status = '{FINISHED}'")})):
        current = None if jobs is None else jobs.get(name)
        for run in tracker.runs_of_sweep(name, kind="train", status=FINISHED):
            if tag(run, "onset") is None or (current is not None and not current.has(tag(run, "job"), None)):
                continue
            out += [{**r, "run_id": run.info.run_id} for r in tracker.download_json(run.info.run_id, "onset.json")]
    out.sort(key=lambda r: (r["sweep"], r["replicate"], -1 if r["level"] is None else r["level"]))
    return out


ONSET_FIELDS = ["sweep", "run_id", "replicate", "level", "density", "split", "threshold", "last_unstable",
                "first_stable", "state", "non_monotone", "analyses_new", "analyses_reused", "grid_points", "grid",
                "measured"]
