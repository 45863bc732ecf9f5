"""`lmcsweep verify`: the outputs of every done job checked against their checksums
(`run.integrity`), and with --repair the plans that have damaged or missing ones run again."""

from __future__ import annotations

import time

from .plan.graph import plan_from_dict
from .run.integrity import describe, outputs, problems
from .run.scheduler import Outcome, Runner
from .store import Store
from .sweep import JobError, tracking_failures
from .tracking import Tracker, check_database


def verify_store(tracker: Tracker, store: Store, name: str | None = None) -> list[dict]:
    """The outputs of every done job of the plans in the store (of sweep `name`), checked against
    their checksums: one row per job and plan, state ok / damaged / missing (`integrity`)."""
    rows = []
    for sweep, trial in store.planned(name):
        plan = plan_from_dict(store.load_plan(sweep, trial))
        twin = {j.hash: j.same_as for j in plan.jobs}
        done = tracker.done_jobs([j.hash for j in plan.jobs] + [t for t in twin.values() if t])
        for job in plan.jobs:
            if (job.hash not in done and twin[job.hash] not in done) or not outputs(store, plan, job):
                continue
            found = problems(store, plan, job)
            state = "damaged" if "damaged" in found.values() else ("missing" if found else "ok")
            rows.append({"sweep": sweep, "trial": trial, "job": job.hash, "name": job.name, "state": state,
                         "files": describe(found)})
    return rows


def plans_missing(tracker: Tracker, store: Store, name: str | None = None) -> list[tuple[str, int | None]]:
    """(sweep, trial) of every plan a sweep run or trial run in MLflow was run from that the store
    no longer has (deleted): `verify` cannot check those jobs, `lmcsweep run` records it again."""
    expected = set()
    rows = [r for r in tracker.run_rows(name) if r["kind"] in ("sweep", "trial")]
    searched = {r["sweep"] for r in rows if r["kind"] == "trial"}
    for r in rows:
        if r["kind"] == "trial" and r["trial"] not in (None, ""):
            expected.add((r["sweep"], int(r["trial"])))
        elif r["kind"] == "sweep" and r["sweep"] not in searched:
            expected.add((r["sweep"], None))
    return sorted(expected - set(store.planned(name)), key=str)


def repair(tracker: Tracker, store: Store, sweep: str, trial: int | None) -> Outcome:
    """Run a planned sweep's (or trial's) plan again through the `Runner`: the jobs whose outputs
    are damaged or missing are computed again; the rest is done."""
    started = time.time()
    plan = plan_from_dict(store.load_plan(sweep, trial))
    outcome = Outcome()
    with store.sweep_lock(plan.sweep.name):
        runner = Runner(tracker, store, progress=False)
        experiment_id = tracker.experiment(plan.sweep.experiment)
        tracker.mark_stale_running(plan.sweep.name)
        parent = runner.tree_root(plan, experiment_id)
        if parent is None:
            raise JobError(f"the run of sweep {sweep!r} is missing from the store (run it with `lmcsweep run`)")
        runner.run_plans([(plan, parent)], experiment_id, outcome, record_plans=False)
        tracking_failures(tracker, runner, outcome)
    outcome.seconds = time.time() - started
    return outcome


def verify_report(tracker: Tracker, store: Store, name: str | None, fix: bool) -> tuple[list[str], int]:
    """`lmcsweep verify`: a line per job checked and a summary; with `fix`, the plans with damaged
    or missing outputs run again (`repair`). The exit code: 0 all ok, 1 something left damaged
    or missing (a plan too: `plans_missing`), 2 an unknown sweep."""
    check_database(tracker.uri)  # a damaged page of mlflow.db: one line, exit 3 (`failures`)
    unplanned = plans_missing(tracker, store, name)
    if name is not None and not store.planned(name) and not unplanned:
        return [f"error: no sweep {name!r} planned in store {store.root} (`lmcsweep status` lists the sweeps)"], 2
    rows = verify_store(tracker, store, name)
    lines = [f"missing  {sweep}" + (f" trial {trial}" if trial is not None else "")
             + f"  (its plan {store.plan_path(sweep, trial).relative_to(store.root)} is missing: "
             "run its sweep file again to record it)" for sweep, trial in unplanned]
    for row in rows:
        where = row["sweep"] + (f" trial {row['trial']}" if row["trial"] is not None else "")
        lines.append(f"{row['state']:8} {where}  {row['name']}  {row['job']}"
                     + (f"  ({row['files']})" if row["files"] else ""))
    counts = {s: sum(r["state"] == s for r in rows) for s in ("ok", "damaged", "missing")}
    lines.append(f"{len(rows)} jobs checked: {counts['ok']} ok, {counts['damaged']} damaged, "
                 f"{counts['missing']} missing")
    bad = sorted({(r["sweep"], r["trial"]) for r in rows if r["state"] != "ok"}, key=str)
    if not bad:
        return lines, int(bool(unplanned))
    if not fix:
        return lines + ["run `lmcsweep verify --repair" + (f" {name}" if name else "")
                        + "` (or `lmcsweep run` the sweep) to compute them again"], 1
    for sweep, trial in bad:
        outcome = repair(tracker, store, sweep, trial)
        lines.append(f"{sweep}" + (f" trial {trial}" if trial is not None else "")
                     + f": {len(outcome.repaired)} jobs repaired, {len(outcome.failed)} failed"
                     + "".join(f"\n  FAILED {job}: {error}" for job, error in outcome.failed.items()))
    left = [r for r in verify_store(tracker, store, name) if r["state"] != "ok"]
    return lines + ["all outputs ok" if not left else f"{len(left)} jobs still damaged or missing"], \
        int(bool(left or unplanned))
