"""A whole sweep run: its lock, its MLflow sweep run, its plan (or its Optuna trials) through the
`Runner`, then IMP matching and the summary metrics (`records.summary`) logged once every
replicate is there; a sweep planned into the store
without running (`plan_sweep`), and one job of a planned sweep run on its own (`run_job`)."""

from __future__ import annotations

import time

from .config import SweepConfig, dataset_of
from .config.yamlfile import read_yaml
from .data import missing_dataset
from .plan.build import build_plan
from .plan.graph import Plan, plan_from_dict
from .plan.specs import Job
from .records.query import log_matching
from .records.status import current_of, plan_hashes
from .records.summary import log_summaries
from .run import paths
from .run.integrity import problems
from .run.scheduler import Outcome, Runner
from .run.throughput import progress_for
from .store import Store
from .queue import Queue, default_uri
from .tracking import FAILED, FINISHED, Tracker, tag
from .workers import enqueue


def tracking_failures(tracker: Tracker, runner: Runner, outcome: Outcome) -> None:
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
        elif sweep.instability is not None and sweep.instability.onset is not None:
            from .search.onset import run_onset

            run_onset(sweep, runner, experiment_id, outcome, progress)
        else:
            plan = build_plan(sweep)
            shown = progress_for(tracker, [plan], set(runner.finished_in_tree(plan)), sweep.name, progress)
            try:
                runner.run_plan(plan, experiment_id, outcome.sweep_run, outcome, shown)
            finally:
                shown.close()
        outcome.backfilled = backfill_sweep(runner, store, sweep.name)
        if sweep.imp is not None and (outcome.computed or outcome.reused):
            log_matching(tracker, sweep.name, plan_hashes(sweep, store.root))
        if sweep.instability is not None and (outcome.computed or outcome.reused):
            log_summaries(tracker, sweep.name, current_of(sweep, store.root), outcome.sweep_run)
        tracking_failures(tracker, runner, outcome)
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
                       "(run it with `lmcsweep run FILE`, on workers `lmcsweep run FILE --workers N`, "
                       "or a SLURM array with `--executor slurm`)")
    if sweep.instability is not None and sweep.instability.onset is not None:
        raise JobError(f"sweep {sweep.name!r} has an onset search: its rewind points are planned as results come "
                       "in (run it with `lmcsweep run`, without workers)")
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
    damaged = [p for p in plan.jobs if p.hash in job.parents and problems(store, plan, p)]
    if damaged:
        raise JobError(f"job {job.hash} ({job.name}) needs the outputs of job(s) {', '.join(p.hash for p in damaged)}, "
                       f"damaged or missing: `lmcsweep verify --repair {plan.sweep.name}` computes them again")
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
        tracking_failures(tracker, runner, outcome)
    outcome.seconds = time.time() - started
    return outcome


def run_sweeps(sweeps: list[SweepConfig], tracker: Tracker, store: Store, progress: bool, retry_failed: bool,
               echo) -> bool:
    """`lmcsweep run`: run each sweep and say how it went (`echo(text, err=)`); whether a job failed."""
    failed = False
    for sweep in sweeps:
        outcome = run_sweep(sweep, tracker, store, progress=progress, retry_failed=retry_failed)
        report(outcome, sweep, echo, "(a failed job stays failed, whatever is edited: `lmcsweep run --retry-failed` "
                                     "runs it again)")
        failed = failed or bool(outcome.failed)
    return failed


def report(outcome: Outcome, sweep: SweepConfig, echo, after_failure: str, workers: str = "") -> None:
    """The end of `lmcsweep run` (in one process or on `workers`): the counts, the jobs by name
    (`outcome_lines`), each failure with its error (then `after_failure`), where to look next."""
    summary = outcome.summary(sweep.name)
    echo(summary[:-1] + f", {workers})" if workers and summary.endswith("s)") else summary)
    for line in outcome_lines(outcome, sweep):
        echo(line)
    for job, error in outcome.failed.items():
        name = outcome.names.get(job)
        echo(f"  FAILED {name} [{job}]: {error}" if name else f"  FAILED {job}: {error}", err=True)
    if outcome.failed:
        echo(f"  {after_failure}", err=True)
    elif not outcome.left:
        echo(f"  see: lmcsweep query --sweep {sweep.name}    or    lmcsweep ui")


def _listed(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def outcome_lines(outcome: Outcome, sweep: SweepConfig) -> list[str]:
    """What a run computed, reused (from where) and found done, by run name; for a search, every
    trial's objective and the best trial."""
    lines = []
    if outcome.computed:
        lines.append(f"  computed ({len(outcome.computed)}): {_listed([outcome.names.get(h, h) for h in outcome.computed])}")
    sources: dict[str, list[str]] = {}
    for name, source in outcome.reuses:
        sources.setdefault(source, []).append(name)
    for source, names in sorted(sources.items()):
        lines.append(f"  reused from {source} ({len(names)}): {_listed(names)}")
    if outcome.left:
        lines.append(f"  not run ({len(outcome.left)}, left in the queue): "
                     f"{_listed([outcome.names.get(h, h) for h in outcome.left])}")
    if outcome.blocked:
        lines.append(f"  blocked ({len(outcome.blocked)}, a job they need failed): "
                     f"{_listed([outcome.names.get(h, h) for h in outcome.blocked])}")
    if outcome.trials:
        direction = sweep.search.objective.direction
        lines.append(f"  trials ({sweep.search.objective.metric}, {direction}):")
        for t in outcome.trials:
            point = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t["params"].items())
            value = f"{t['value']:.6g}" if t["value"] is not None else "-"
            lines.append(f"    trial {t['number']:<4} {point:<40} objective {value:<12} {t['state']}")
        scored = [t for t in outcome.trials if t["state"] == "COMPLETE" and t["value"] is not None]
        if scored:
            best = (min if direction == "minimize" else max)(scored, key=lambda t: t["value"])
            point = " ".join(f"{k}={v}" for k, v in best["params"].items())
            lines.append(f"  best: trial {best['number']} ({point}): objective {best['value']:.6g}")
    return lines
