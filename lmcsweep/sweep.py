"""A whole sweep run: its lock, its MLflow sweep run, its plan (or its Optuna trials) through the
`Runner`, then IMP matching and the summary metrics (`records.summary`) logged once every
replicate is there; a sweep planned into the store
without running (`plan_sweep`), and one job of a planned sweep run on its own (`run_job`)."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from .config import SweepConfig, dataset_of
from .config.yamlfile import read_yaml
from .data import missing_dataset
from .plan.build import build_plan
from .plan.graph import Plan, plan_from_dict, same_study, summary
from .plan.specs import Job
from .records.query import log_matching
from .records.status import current_of, plan_hashes
from .records.summary import log_summaries
from .run import paths
from .run.scheduler import Outcome, Runner
from .store import Store
from .queue import Queue, default_uri
from .tracking import FAILED, FINISHED, Tracker, tag
from .workers import drive, enqueue


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
        outcome.backfilled = backfill_sweep(runner, store, sweep.name)
        if sweep.imp is not None and (outcome.computed or outcome.reused):
            log_matching(tracker, sweep.name, plan_hashes(sweep, store.root))
        if sweep.instability is not None and (outcome.computed or outcome.reused):
            log_summaries(tracker, sweep.name, current_of(sweep, store.root), outcome.sweep_run)
        _tracking_failures(tracker, runner, outcome)
        tracker.finish(outcome.sweep_run, FAILED if outcome.failed else FINISHED)
    outcome.seconds = time.time() - started
    return outcome


def backfill_sweep(runner: Runner, store: Store, name: str) -> int:
    """The path metrics (`run.paths`) for the finished interpolation runs of sweep `name` (every
    plan recorded for it: the sweep's, or each trial's) that predate them, from their stored
    checkpoints. Returns how many runs were completed."""
    count = 0
    for sweep, trial in store.planned(name):
        plan = plan_from_dict(store.load_plan(sweep, trial))
        jobs = [j for j in plan.jobs if j.kind == "interpolate"]
        if not jobs:
            continue
        runs = [r for r in runner.tracker.runs_of_sweep(name, kind="interpolate", status=FINISHED)
                if tag(r, "trial") == (None if trial is None else str(trial))]
        specs = {j.hash: j.spec for j in jobs}
        if any(tag(r, "job") in specs and paths.lacking(r, specs[tag(r, "job")]) for r in runs):
            count += paths.backfill(runner.context(plan), jobs, name, trial)
    return count


def plan_sweep(sweep: SweepConfig, tracker: Tracker, store: Store, queue: Queue | None = None) -> str:
    """Make the sweep's experiment and run (status SCHEDULED), record its plan's specs in the store
    and its jobs in the queue, running nothing: then any process can run its jobs (`run_job`,
    `lmcsweep worker`). Returns the sweep run."""
    if sweep.search is not None:
        raise JobError(f"sweep {sweep.name!r} has a search: its trials are planned as they are asked "
                       "(run it with `lmcsweep run`)")
    with store.sweep_lock(sweep.name):
        runner = Runner(tracker, store, progress=False)
        experiment_id = tracker.experiment(sweep.experiment)
        run_id = runner.sweep_run(sweep, experiment_id)
        plan = build_plan(sweep)
        store.save_plan(sweep.name, None, plan.to_dict())
        enqueue(sweep, runner, queue or Queue(default_uri(store.root)), plan)
        tracker.finish(run_id, "SCHEDULED")
    return run_id


def data_problem(path: str, sweep: SweepConfig) -> str | None:
    """`FILE:LINE: field: message` when the sweep's data set is not on this machine (None when it
    is, will be downloaded or generated): at the line of data.dataset, or of the preset that picks it."""
    d = sweep.data
    why = missing_dataset(dataset_of(sweep), d.root, d.download)
    if why is None:
        return None
    field = ("data", "dataset") if d.dataset else ("preset",)
    return f"{path}:{read_yaml(path)[1].line(field)}: {'.'.join(field)}: {why}"


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
    outcome = Outcome()
    with store.sweep_lock(plan.sweep.name):
        runner = Runner(tracker, store, progress=False, retry_failed=retry_failed)
        experiment_id = tracker.experiment(plan.sweep.experiment)
        tracker.mark_stale_running(plan.sweep.name)
        parent = runner.tree_root(plan, experiment_id)
        if parent is None:
            raise JobError(f"the {'trial' if plan.trial is not None else 'sweep'} run of job {job.hash} is missing "
                           f"from the store (run the sweep with `lmcsweep run` first)")
        single = Plan(sweep=plan.sweep, hyper=plan.hyper, jobs=[job], trial=plan.trial,
                      overrides=plan.overrides, study=plan.study)
        runner.run_plans([(single, parent)], experiment_id, outcome, record_plans=False)
        _tracking_failures(tracker, runner, outcome)
    outcome.seconds = time.time() - started
    return outcome


def run_with_workers(sweep: SweepConfig, tracker: Tracker, store: Store, queue: Queue, workers: int,
                     store_arg: str, tracking_uri: str | None, on_progress=None,
                     slurm: dict[str, str] | None = None, gpus: list[str] | None = None) -> dict[str, object]:
    """Run (or resume) a sweep on `workers` local worker processes sharing the job queue: the
    experiment, the sweep run, the plan and the queue are made here first, then the workers start;
    IMP matching is logged and the sweep run finished once they are done."""
    started = time.time()
    with store.sweep_lock(sweep.name):
        runner = Runner(tracker, store, progress=False)
        runner.dataset(sweep, dataset_of(sweep))  # a missing data set stops here, before any run
        experiment_id = tracker.experiment(sweep.experiment)
        tracker.mark_stale_running(sweep.name)
        run_id = runner.sweep_run(sweep, experiment_id)
        queue.create()
        result: dict[str, object] = {}

        def run_batch(items: list[tuple[Plan, str]], outcome: Outcome) -> None:
            """Plans (a sweep's, or trials') into the store and the queue, then the workers."""
            for plan, _ in items:
                store.save_plan(sweep.name, plan.trial, plan.to_dict())
                queue.enqueue(sweep.name, plan.trial, [j.to_dict() for j in plan.jobs],
                              set(runner.finished_in_tree(plan)))
            result.update(drive(sweep, store, queue, workers, store_arg, tracking_uri, on_progress,
                                slurm=slurm, gpus=gpus))
            failures = result["failures"]
            for plan, _ in items:
                for job in plan.jobs:
                    if job.hash in failures:
                        outcome.failed[job.hash] = " | ".join(failures[job.hash])

        outcome = Outcome(sweep_run=run_id)
        if sweep.search is not None:
            from .records.objective import objective_value
            from .search.driver import run_search  # optuna: loaded only for a sweep with a search

            grid = sweep.search.sampler == "grid"  # a grid's points all at once; else a trial per worker
            run_search(sweep, runner, experiment_id, outcome, objective_value,
                       at_once=1_000_000 if grid else workers * max(1, len(gpus or [])),
                       run_batch=run_batch)
        else:
            run_batch([(build_plan(sweep), run_id)], outcome)
        if sweep.imp is not None and result.get("done"):
            log_matching(tracker, sweep.name, plan_hashes(sweep, store.root))
        if sweep.instability is not None and result.get("done"):
            log_summaries(tracker, sweep.name, current_of(sweep, store.root), run_id)
        counts = queue.counts(sweep.name)
        result.update(counts=counts, failures=queue.failures(sweep.name), done=counts.get("done", 0),
                      failed=counts.get("failed", 0), open=counts.get("waiting", 0) + counts.get("claimed", 0),
                      trials_failed=[k for k in outcome.failed if k.startswith("trial ")])
        bad = result["failed"] or result["trials_failed"]
        tracker.finish(run_id, FAILED if bad else FINISHED if not result["open"] else "KILLED")
    result["seconds"] = time.time() - started
    return result


def write_ticket(tracker: Tracker, store: Store, name: str, out: Path, control: str | None = None, *,
                 replicate: int, rewind: str, level: int, trial: int | None = None) -> str:
    """`export_ticket` written to `out` (atomically); what was written, in a line. JobError for
    anything that stops it (no such level, a missing data set or file, an unwritable `out`)."""
    from .data import DataError
    from .store import atomic_save

    try:
        ticket = export_ticket(tracker, store, name, replicate, rewind, level, control, trial)
        atomic_save(ticket, out)
    except (DataError, FileNotFoundError) as exc:
        raise JobError(str(exc)) from None
    except OSError as exc:
        raise JobError(f"cannot write {out}: {exc.strerror or exc}") from None
    kind = f"control {ticket['control']}" if ticket["control"] else "IMP"
    return (f"{out}: {ticket['model']['name']} {kind}, level {ticket['level']}, density {ticket['density']:.4f}, "
            f"rewind {ticket['rewind']}; load: lmcsweep.export.load_ticket(path)")


def export_ticket(tracker: Tracker, store: Store, name: str, replicate: int, rewind: str, level: int,
                  control: str | None = None, trial: int | None = None) -> dict:
    """The ticket (`export.make_ticket`) of IMP level `level` at rewind point `rewind` (a duration:
    "20it", "2ep", or iterations) of `replicate` in the recorded plan of sweep `name` (its `trial`),
    or of one of its controls, made from the store. JobError when there is no such level or it is not done."""
    from .run.tickets import ticket
    from .steps import parse_step

    if store.load_plan(name, trial) is None:
        where = f"sweep {name!r}" + (f" trial {trial}" if trial is not None else "")
        raise JobError(f"{where} is not planned in store {store.root} (run it with `lmcsweep run FILE` first)")
    plan = plan_from_dict(store.load_plan(name, trial))
    try:
        k = plan.hyper.iterations_of(parse_step(int(rewind) if rewind.isdigit() else rewind))
    except ValueError as exc:
        raise JobError(f"--rewind: {exc}") from None
    if not any(j.kind == "prune" for j in plan.jobs):
        raise JobError(f"sweep {name!r} has no IMP levels (no imp section): no subnetwork to export")
    levels = [j for j in plan.jobs if j.kind == "prune" and j.tags.get("replicate") == replicate]
    found = [j for j in levels if j.tags.get("rewind") == k and j.tags.get("level") == level]
    if not found:
        have = sorted({(j.tags.get("rewind"), j.tags.get("level")) for j in levels})
        raise JobError(f"sweep {name!r} has no IMP level {level} at rewind {k} for replicate {replicate} "
                       f"(it has rewind/level: {', '.join(f'{r}/{lv}' for r, lv in have) or 'none'})")
    level_job = found[0]
    done = tracker.done_jobs([level_job.hash])
    if level_job.hash not in done and not store.job_dir(level_job.hash).joinpath("mask.pt").exists():
        raise JobError(f"IMP level {level} at rewind {k} of replicate {replicate} is not done yet "
                       f"(`lmcsweep run` the sweep first)")
    branch = None
    if control is not None:
        copies = [j for j in plan.jobs if j.kind == "branch" and j.spec.mask == level_job.hash
                  and j.spec.control == control]
        if not copies:
            raise JobError(f"sweep {name!r} has no {control} control at level {level}, rewind {k}")
        branch = min(copies, key=lambda j: j.tags.get("copy", 0))
    runner = Runner(tracker, store, progress=False)
    ctx = runner.context(plan)
    return ticket(ctx, level_job.hash, level_job.spec, branch.spec if branch else None,
                  branch.hash if branch else None)

