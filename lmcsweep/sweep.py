"""A whole sweep run: its lock, its MLflow sweep run, its plan (or its Optuna trials) through the
`Runner`, then IMP matching logged once every replicate is there; a sweep planned into the store
without running (`plan_sweep`), and one job of a planned sweep run on its own (`run_job`)."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from .config import SweepConfig, dataset_of
from .plan.build import build_plan
from .plan.graph import Plan, plan_from_dict, same_study, summary
from .plan.specs import Job
from .records.query import log_matching
from .records.status import plan_hashes
from .run.integrity import describe, outputs, problems
from .run.scheduler import Outcome, Runner
from .store import Store
from .tracking import FAILED, FINISHED, Tracker, tag


def _tracking_failures(tracker: Tracker, runner: Runner, outcome: Outcome) -> None:
    """Writes the tracker did in the background and could not do (`TrackingProcess`; waits for all
    of them): their jobs count as failed (their runs were marked FAILED)."""
    for run_id, message in tracker.write_errors().items():
        job = runner.computed_runs.get(run_id)
        if job in outcome.computed:
            outcome.computed.remove(job)
        outcome.failed[job or f"run {run_id}"] = message


def run_sweep(sweep: SweepConfig, tracker: Tracker, store: Store, progress: bool = True,
              retry_failed: bool = False) -> Outcome:
    """Run (or resume) a whole sweep; with a `search` section, its Optuna trials."""
    started = time.time()
    outcome = Outcome()
    with store.sweep_lock(sweep.name):
        runner = Runner(tracker, store, progress=progress, retry_failed=retry_failed)
        runner.dataset(sweep, dataset_of(sweep), background=True)  # read while MLflow answers
        experiment_id = tracker.experiment(sweep.experiment)
        tracker.mark_stale_running(sweep.name)
        runner.dataset(sweep, dataset_of(sweep))  # a missing data set (DataError) stops here, before any run
        outcome.sweep_run = runner.sweep_run(sweep, experiment_id)
        if sweep.search is not None:
            from .records.objective import objective_value
            from .search.driver import run_search  # optuna: loaded only for a sweep with a search

            run_search(sweep, runner, experiment_id, outcome, objective_value)
        else:
            plan = build_plan(sweep)
            done = set(runner.finished_in_tree(plan))
            left = summary([plan], done)["iterations_remaining"]
            bar = tqdm(total=left, unit="it", disable=not progress or left == 0, dynamic_ncols=True,
                       mininterval=0.5)
            try:
                runner.run_plan(plan, experiment_id, outcome.sweep_run, outcome, bar)
            finally:
                bar.close()
        if sweep.imp is not None and (outcome.computed or outcome.reused):
            log_matching(tracker, sweep.name, plan_hashes(sweep, store.root))
        _tracking_failures(tracker, runner, outcome)
        tracker.finish(outcome.sweep_run, FAILED if outcome.failed else FINISHED)
    outcome.seconds = time.time() - started
    return outcome


def plan_sweep(sweep: SweepConfig, tracker: Tracker, store: Store) -> str:
    """Make the sweep's experiment and run (status SCHEDULED) and record its plan's specs in the
    store, running nothing: then any process can run its jobs (`run_job`). Returns the sweep run."""
    if sweep.search is not None:
        raise JobError(f"sweep {sweep.name!r} has a search: its trials are planned as they are asked "
                       "(run it with `lmcsweep run`)")
    with store.sweep_lock(sweep.name):
        runner = Runner(tracker, store, progress=False)
        experiment_id = tracker.experiment(sweep.experiment)
        run_id = runner.sweep_run(sweep, experiment_id)
        store.save_plan(sweep.name, None, build_plan(sweep).to_dict())
        tracker.finish(run_id, "SCHEDULED")
    return run_id


class JobError(ValueError):
    """A job that cannot be run as asked: not in a planned sweep, or its parents not done."""


def find_job(store: Store, job: str, sweep: str | None = None, trial: int | None = None) -> tuple[Plan, Job]:
    """The stored plan (of `sweep`, `trial` when given) that holds job `job`, and the job."""
    found = []
    for name, number in store.planned(sweep, trial):
        plan = plan_from_dict(store.load_plan(name, number))
        found += [(plan, j) for j in plan.jobs if j.hash == job]
    if not found:
        where = f"sweep {sweep!r}" if sweep else "any sweep"
        raise JobError(f"job {job} is not in {where} planned in store {store.root} "
                       "(`lmcsweep run FILE` or `lmcsweep run --plan-only FILE` plans a sweep)")
    if len(found) > 1:
        places = ", ".join(sorted({f"{p.sweep.name}" + (f" trial {p.trial}" if p.trial is not None else "")
                                   for p, _ in found}))
        raise JobError(f"job {job} is planned in several places ({places}): name one with --sweep/--trial")
    return found[0]


def run_job(tracker: Tracker, store: Store, job_hash: str, sweep: str | None = None, trial: int | None = None,
            retry_failed: bool = False) -> Outcome:
    """Run exactly one job of a planned sweep in this process, from its stored spec, recorded in its
    own MLflow run nested where the sweep's runner would nest it (as the runner does: a job done
    in the sweep's tree is left alone; one computed elsewhere gets a reuse record). Its parents must
    be done. Holds the sweep's lock while it runs."""
    started = time.time()
    plan, job = find_job(store, job_hash, sweep, trial)
    twin = {j.hash: j.same_as for j in plan.jobs}  # IMP level 0: done when its dense twin is
    done = tracker.done_jobs(job.parents + [twin[p] for p in job.parents if twin.get(p)])
    missing = [p for p in job.parents if p not in done and twin.get(p) not in done]
    if missing:
        raise JobError(f"job {job.hash} ({job.name}) needs job(s) {', '.join(missing)} done first")
    damaged = [p for p in plan.jobs if p.hash in job.parents and problems(store, plan, p)]
    if damaged:
        raise JobError(f"job {job.hash} ({job.name}) needs the outputs of job(s) {', '.join(p.hash for p in damaged)}, "
                       f"damaged or missing: `lmcsweep verify --repair {plan.sweep.name}` computes them again")
    outcome = Outcome()
    with store.sweep_lock(plan.sweep.name):
        runner = Runner(tracker, store, progress=False, retry_failed=retry_failed)
        experiment_id = tracker.experiment(plan.sweep.experiment)
        tracker.mark_stale_running(plan.sweep.name)
        parent = tree_root(tracker, plan, experiment_id)
        if parent is None:
            raise JobError(f"the {'trial' if plan.trial is not None else 'sweep'} run of job {job.hash} is missing "
                           f"from the store (run the sweep with `lmcsweep run` first)")
        single = Plan(sweep=plan.sweep, hyper=plan.hyper, jobs=[job], trial=plan.trial,
                      overrides=plan.overrides, study=plan.study)
        runner.run_plans([(single, parent)], experiment_id, outcome, record_plans=False)
        _tracking_failures(tracker, runner, outcome)
    outcome.seconds = time.time() - started
    return outcome


def tree_root(tracker: Tracker, plan: Plan, experiment_id: str) -> str | None:
    """The run a plan's tree hangs from: its sweep's run, or its trial's (of its study)."""
    kind = "sweep" if plan.trial is None else "trial"
    for run in tracker.runs_of_sweep(plan.sweep.name, kind=kind):
        if run.info.experiment_id != experiment_id:
            continue
        if plan.trial is None or (tag(run, "trial") == str(plan.trial) and same_study(tag(run, "study"), plan.study)):
            return run.info.run_id
    return None


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
        parent = tree_root(tracker, plan, experiment_id)
        if parent is None:
            raise JobError(f"the run of sweep {sweep!r} is missing from the store (run it with `lmcsweep run`)")
        runner.run_plans([(plan, parent)], experiment_id, outcome, record_plans=False)
        _tracking_failures(tracker, runner, outcome)
    outcome.seconds = time.time() - started
    return outcome


def verify_report(tracker: Tracker, store: Store, name: str | None, fix: bool) -> tuple[list[str], int]:
    """`lmcsweep verify`: a line per job checked and a summary; with `fix`, the plans with damaged
    or missing outputs run again (`repair`). The exit code: 0 all ok, 1 something left damaged
    or missing, 2 an unknown sweep."""
    if name is not None and not store.planned(name):
        return [f"error: no sweep {name!r} planned in store {store.root} (`lmcsweep status` lists the sweeps)"], 2
    rows = verify_store(tracker, store, name)
    lines = []
    for row in rows:
        where = row["sweep"] + (f" trial {row['trial']}" if row["trial"] is not None else "")
        lines.append(f"{row['state']:8} {where}  {row['name']}  {row['job']}"
                     + (f"  ({row['files']})" if row["files"] else ""))
    counts = {s: sum(r["state"] == s for r in rows) for s in ("ok", "damaged", "missing")}
    lines.append(f"{len(rows)} jobs checked: {counts['ok']} ok, {counts['damaged']} damaged, "
                 f"{counts['missing']} missing")
    bad = sorted({(r["sweep"], r["trial"]) for r in rows if r["state"] != "ok"}, key=str)
    if not bad:
        return lines, 0
    if not fix:
        return lines + ["run `lmcsweep verify --repair" + (f" {name}" if name else "")
                        + "` (or `lmcsweep run` the sweep) to compute them again"], 1
    for sweep, trial in bad:
        outcome = repair(tracker, store, sweep, trial)
        lines.append(f"{sweep}" + (f" trial {trial}" if trial is not None else "")
                     + f": {len(outcome.repaired)} jobs repaired, {len(outcome.failed)} failed"
                     + "".join(f"\n  FAILED {job}: {error}" for job, error in outcome.failed.items()))
    left = [r for r in verify_store(tracker, store, name) if r["state"] != "ok"]
    return lines + ["all outputs ok" if not left else f"{len(left)} jobs still damaged or missing"], int(bool(left))


def run_sweeps(sweeps: list[SweepConfig], tracker: Tracker, store: Store, progress: bool, retry_failed: bool,
               echo) -> bool:
    """`lmcsweep run`: run each sweep and say how it went (`echo(text, err=)`); whether a job failed."""
    failed = False
    for sweep in sweeps:
        outcome = run_sweep(sweep, tracker, store, progress=progress, retry_failed=retry_failed)
        if not outcome.computed and not outcome.reused and not outcome.failed and not outcome.blocked:
            echo(f"{sweep.name}: nothing to do ({len(outcome.skipped)} jobs already done)")
        else:
            repaired = f", {len(outcome.repaired)} of them repaired (outputs damaged or missing)"
            echo(f"{sweep.name}: {len(outcome.computed)} jobs run, {len(outcome.reused)} reused from the "
                 f"store, {len(outcome.skipped)} already done, {len(outcome.failed)} failed, "
                 f"{len(outcome.blocked)} blocked ({outcome.seconds:.0f}s)" + (repaired if outcome.repaired else ""))
        for job, error in outcome.failed.items():
            echo(f"  FAILED {job}: {error}", err=True)
        if outcome.failed:
            echo("  (a failed job stays failed, whatever is edited: `lmcsweep run --retry-failed` runs it "
                 "again)", err=True)
        failed = failed or bool(outcome.failed)
        if not outcome.failed:
            echo(f"  see: lmcsweep query --sweep {sweep.name}    or    lmcsweep ui")
    return failed
