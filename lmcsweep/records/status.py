"""`lmcsweep status`: every sweep in the store with its jobs done / running / failed / pending.

The jobs of a sweep are rebuilt from the config its sweep run recorded (so no sweep file is
needed); a job is done when a FINISHED run of its hash exists anywhere in the store, running or
failed when this sweep's latest run of it is, and pending otherwise. The runs are read in one
query of the store's tags (`Tracker.run_rows`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError, Lines, SweepConfig, validate
from ..store import Store
from ..tracking import FAILED, FINISHED, RUNNING, Tracker
from ..plan.build import build_plan
from ..identity import sweep_fingerprint
from ..plan.graph import Plan, plan_from_dict, same_study, summary
from ..run.integrity import outputs
from ..run.progress import clock
from ..run.throughput import estimate, measure, resumable
from .query import Current


def sweep_plans(sweep: SweepConfig, store_root: str | Path | None) -> list[Plan]:
    if sweep.search is not None:
        from ..search.study import trial_plans  # optuna: loaded only for a sweep with a search

        return trial_plans(sweep, store_root)
    if sweep.instability is not None and sweep.instability.onset is not None and store_root is not None:
        stored = Store(store_root).load_plan(sweep.name)  # an onset search's: what it has probed so far
        if stored is not None and stored["sweep"] == sweep_fingerprint(sweep):
            return [plan_from_dict(stored)]
        return [build_plan(sweep, probes={})]
    return [build_plan(sweep)]


def plan_hashes(sweep: SweepConfig, store_root: str | Path | None) -> set[str]:
    """The hashes of every job of the sweep's definition (of all its trials' plans)."""
    return {j.hash for p in sweep_plans(sweep, store_root) for j in p.jobs}


def _recorded_config(tracker: Tracker, run: dict[str, Any]) -> SweepConfig | None:
    """The sweep config its sweep run recorded last (config-<digest>.json, else config.json)."""
    for name in (f"config-{run['job']}.json", "config.json"):
        try:
            raw = tracker.download_json(run["run_id"], name)
        except Exception:  # noqa: BLE001 -- missing artifact: try the next name
            continue
        try:
            return validate(raw, Lines(), f"{run['sweep']} (recorded config)", space=False)
        except ConfigError:
            return None
    return None


def _current_of(tracker: Tracker, store_root: str | Path, sweep_run: dict[str, Any] | None) -> Current | None:
    """The definition its sweep run recorded last (None when it cannot be read)."""
    config = _recorded_config(tracker, sweep_run) if sweep_run is not None else None
    return None if config is None else current_of(config, store_root)


def current_of(sweep: SweepConfig, store_root: str | Path) -> Current:
    """The jobs (and Optuna study) of this definition of a sweep."""
    study = None
    if sweep.search is not None:
        from ..search.study import study_name  # optuna: loaded only for a sweep with a search

        study = study_name(sweep)
    return Current(plan_hashes(sweep, store_root), study)


def recorded_configs(tracker: Tracker, name: str | None = None) -> dict[str, SweepConfig]:
    """Sweep name -> the config its sweep run recorded last, for every sweep in the store (or
    `name`) whose recorded config can be read."""
    out = {}
    for run in tracker.run_rows(name):
        if run["kind"] == "sweep":
            config = _recorded_config(tracker, run)
            if config is not None:
                out[run["sweep"]] = config
    return out


def current_jobs(tracker: Tracker, store_root: str | Path, name: str | None = None) -> dict[str, Current]:
    """Sweep name -> its current definition (from the config its sweep run recorded last), for every
    sweep in the store (or `name`). A sweep edited and run again keeps the runs of the jobs it no
    longer has; they are not its results any more. A sweep whose recorded config cannot be read is
    left out (its records are not filtered)."""
    out = {}
    for run in tracker.run_rows(name):
        if run["kind"] == "sweep":
            now = _current_of(tracker, store_root, run)
            if now is not None:
                out[run["sweep"]] = now
    return out


def sweep_status(tracker: Tracker, store_root: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """One row per sweep: jobs, done, running, failed, interrupted, pending (None when its recorded
    config cannot be read), trial runs by status, the sweep run's status (INTERRUPTED: RUNNING, but
    no runner holds the sweep), whether a runner is alive."""
    rows, active = _snapshot(tracker, Store(store_root), name)
    rows_by_sweep: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        rows_by_sweep.setdefault(row["sweep"], []).append(row)
    finished_anywhere = set(tracker.done_jobs()) if rows_by_sweep else set()
    out = []
    for sweep_name, runs in sorted(rows_by_sweep.items()):
        latest: dict[str, str] = {}  # job hash -> status of this sweep's latest run of it (FINISHED sticks)
        sweep_run = next((run for run in reversed(runs) if run["kind"] == "sweep"), None)  # the latest
        now = _current_of(tracker, store_root, sweep_run)
        trials: dict[str, int] = {}
        for run in runs:
            if run["kind"] == "trial":  # of the current study only (an edited search starts another)
                if now is None or same_study(run["study"], now.study):
                    trials[run["status"]] = trials.get(run["status"], 0) + 1
            elif run["kind"] != "sweep" and run["job"] and latest.get(run["job"]) != FINISHED:
                latest[run["job"]] = run["status"]
        hashes = now.jobs if now is not None else set(latest)
        alive = sweep_name in active
        sweep_state = sweep_run["status"] if sweep_run else "?"
        if sweep_state == RUNNING and not alive:  # its runner was killed: `lmcsweep run` resumes it
            sweep_state = "INTERRUPTED"
        row = {"sweep": sweep_name, "jobs": len(hashes), "done": 0, "running": 0, "failed": 0, "interrupted": 0,
               "pending": 0, "trials": trials or None, "status": sweep_state, "runner": "active" if alive else "none"}
        for h in hashes:
            state = latest.get(h)
            if h in finished_anywhere or state == FINISHED:
                row["done"] += 1
            elif state == RUNNING:
                row["running" if alive else "interrupted"] += 1
            elif state == FAILED:
                row["failed"] += 1
            else:
                row["pending"] += 1
        if now is None:
            row["pending"] = None
        out.append(row)
    return out


def _snapshot(tracker: Tracker, store: Store, name: str | None,
              tries: int = 5) -> tuple[list[dict[str, Any]], set[str]]:
    """The runs and the sweeps a runner holds, as one snapshot: the locks are read before and after
    the runs, and the runs again until both agree (a sweep that finished, or started, while its runs
    were read would otherwise show RUNNING with no runner: INTERRUPTED)."""
    before = store.active_runners()
    for _ in range(tries):
        rows = tracker.run_rows(name)
        after = store.active_runners()
        if after == before:
            break
        before = after
    return rows, after


def plan_lines(sweep: SweepConfig, tracker: Tracker) -> list[str]:
    """`lmcsweep plan`: the jobs of a sweep (of all its trials) by kind, done and left, the
    interrupted ones with how far they got, the training iterations left, and the time they would
    take at the store's measured throughput (`run.throughput`)."""
    plans = sweep_plans(sweep, tracker.root)
    jobs = {j.hash for p in plans for j in p.jobs}
    done = set(tracker.done_jobs(jobs)) if jobs and tracker.exists() else set()
    store = Store(tracker.root)
    # done, but a file the jobs after it read is gone (e.g. the checkpoint at a rewind point added
    # since): `run` computes it again, so it is left (damaged files are found by `run` and `verify`)
    lost = {j.hash for p in plans for j in p.jobs if j.hash in done
            and not all(path.exists() for path in outputs(store, p, j))}
    done -= lost
    s = summary(plans, done)
    left = jobs - done
    started = resumable(store, plans, left) if left else {}
    out = [f"sweep {sweep.name} (experiment {sweep.experiment}, preset {sweep.preset}"
           + (f", {len(plans)} trials" if sweep.search else "") + ")",
           f"  {'kind':<12}{'jobs':>8}{'done':>8}{'left':>8}"]
    for kind, row in s["kinds"].items():
        out.append(f"  {kind:<12}{row['jobs']:>8}{row['done']:>8}{row['remaining']:>8}")
    out.append(f"  {'total':<12}{s['jobs']:>8}{s['done']:>8}{s['remaining']:>8}")
    if s["twins_remaining"]:
        out.append(f"  of the jobs left, {s['twins_remaining']} (IMP level 0) are the dense ones: reused, not run again")
    if lost:
        out.append(f"  of the jobs left, {len(lost)} finished before but their stored outputs are missing "
                   f"(a checkpoint at a new rewind point, or deleted): they run again")
    if started:
        out.append(f"  of the jobs left, {len(started)} (interrupted) resume from their resume points "
                   f"({sum(d for d, _ in started.values())} of their {sum(t for _, t in started.values())} "
                   f"iterations trained); {s['remaining'] - len(started)} not started")
    trained = {h: d for h, (d, _) in started.items()}
    out.append(f"  training iterations left: {s['iterations_remaining'] - sum(trained.values())}")
    if left:
        out.append("  " + estimate_line(tracker, plans, left, trained))
    onset = sweep.instability.onset if sweep.instability is not None else None
    if onset is not None:
        n = len(sweep.instability.points)
        out.append(f"  onset search: the plan so far; each replicate (and IMP level) probes its grid of {n} rewind "
                   f"points one at a time, at most about {n.bit_length()} of them (bisection)")
    return out


def estimate_line(tracker: Tracker, plans: list[Plan], left: set[str], trained: dict[str, int]) -> str:
    """The time the jobs left would take at this store's measured throughput for the network, or
    that it has none."""
    measured = measure(tracker, plans[0])
    est = estimate(measured, plans, left, trained)
    basis = ", ".join(f"{n} {what}" for what, n in measured.runs.items() if n)
    if est["seconds"] is None:
        return ("time left: no measurements of this network in the store yet (none of its training or "
                "interpolation runs has finished here)")
    line = f"time left: about {clock(est['seconds'])}"
    if est["unmeasured"]:
        line += " + " + ", ".join(f"{n} {what} (not measured)" for what, n in est["unmeasured"].items())
    return line + f" on {measured.cores} core{'s' if measured.cores > 1 else ''} (measured from {basis} runs of this network here)"


def status_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`lmcsweep status`'s table of `sweep_status` rows: done + running + interrupted + failed +
    pending = jobs."""
    lines = [f"{'sweep':<24}{'jobs':>7}{'done':>7}{'running':>9}{'interrupted':>13}{'failed':>8}{'pending':>9}  status"]
    for r in rows:
        pending = "?" if r["pending"] is None else r["pending"]
        note = r["status"]
        if r["trials"]:
            note += ", trials " + " ".join(f"{k.lower()} {v}" for k, v in r["trials"].items() if v)
        lines.append(f"{r['sweep']:<24}{r['jobs']:>7}{r['done']:>7}{r['running']:>9}{r['interrupted']:>13}"
                     f"{r['failed']:>8}{pending:>9}  {note}")
    return lines

