"""A whole sweep run: its lock, its MLflow sweep run, its plan (or its Optuna trials) through the
`Runner`, then IMP matching logged once every replicate is there."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from .config import SweepConfig, dataset_of
from .plan.build import build_plan
from .plan.graph import summary
from .records.query import log_matching
from .records.status import plan_hashes
from .run.scheduler import Outcome, Runner, sweep_lock
from .store import Store
from .tracking import FAILED, FINISHED, Tracker


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
    with sweep_lock(store, sweep.name):
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
            done = set(runner._tree_runs(sweep, None)["finished"])
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
