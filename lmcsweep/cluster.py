"""A sweep on many workers, the driver's side: the experiment, the sweep run, the plans (a sweep's,
a grid's points, or a random/tpe search's study and trial slots, whose trials the workers ask)
and the queue are made here before any worker starts;
the workers (`workers.drive`: local processes, per GPU, or a SLURM array) run the jobs; IMP
matching and summaries are logged once they are done."""

from __future__ import annotations

import time

from .config import SlurmConfig, SweepConfig, dataset_of
from .plan.build import build_plan
from .plan.graph import Plan
from .queue import Queue
from .records.query import log_matching
from .records.status import current_of, plan_hashes
from .records.summary import log_summaries
from .run.scheduler import Outcome, Runner
from .store import Store
from .tracking import FAILED, FINISHED, Tracker
from .workers import drive


def run_with_workers(sweep: SweepConfig, tracker: Tracker, store: Store, queue: Queue, workers: int,
                     store_arg: str, tracking_uri: str | None, on_progress=None,
                     slurm: SlurmConfig | None = None, gpus: list[str] | None = None) -> dict[str, object]:
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
        if sweep.search is not None and sweep.search.sampler != "grid":  # workers ask and tell its trials
            from .search.study import study_trials
            from .worker_trials import open_trials

            target, retry_before = open_trials(sweep, runner, queue, experiment_id, outcome)
            if target or queue.open_work(sweep.name):
                result.update(drive(sweep, store, queue, workers, store_arg, tracking_uri, on_progress,
                                    slurm=slurm, gpus=gpus))
            for t in study_trials(sweep, store.root):  # failed in this run (earlier ones: reported already)
                if t["state"] == "FAIL" and t["error"] and (retry_before is None or t["number"] >= retry_before):
                    outcome.failed[f"trial {t['number']}"] = t["error"]
        elif sweep.search is not None:
            from .records.objective import objective_value
            from .search.driver import run_search  # optuna: loaded only for a sweep with a search

            run_search(sweep, runner, experiment_id, outcome, objective_value,  # a grid's points all at once
                       at_once=1_000_000, run_batch=run_batch)
        elif sweep.instability is not None and sweep.instability.onset is not None:
            from .search.onset import run_onset  # planned round by round, each round on the workers

            run_onset(sweep, runner, experiment_id, outcome, False, run_batch=run_batch)
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
