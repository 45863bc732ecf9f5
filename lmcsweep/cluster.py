"""A sweep on many workers, the driver's side: the experiment, the sweep run, the plans (a sweep's,
a grid's points, or a random/tpe search's study and trial slots, whose trials the workers ask)
and the queue are made here before any worker starts;
the workers (`workers.drive`: local processes, per GPU, or a SLURM array) run the jobs; IMP
matching and summaries are logged once they are done."""

from __future__ import annotations

import time
from functools import partial

from .config import SlurmConfig, SweepConfig, dataset_of
from .plan.build import build_plan
from .plan.graph import Plan
from .queue import Queue
from .records.query import log_matching
from .records.status import current_of, plan_hashes
from .records.summary import log_summaries
from .run.scheduler import Outcome, Runner
from .run.throughput import progress_for
from .store import Store
from .tracking import FAILED, FINISHED, Tracker
from .watch import QueueProgress, Watch
from .workers import drive


def run_with_workers(sweep: SweepConfig, tracker: Tracker, store: Store, queue: Queue, workers: int,
                     store_arg: str, tracking_uri: str | None, progress: bool = True,
                     slurm: SlurmConfig | None = None, gpus: list[str] | None = None) -> tuple[Outcome, list[str]]:
    """Run (or resume) a sweep on `workers` worker processes sharing the job queue: the
    experiment, the sweep run, the plan and the queue are made here first, then the workers start,
    watched through the queue (`watch`: a bar when `progress` and stderr is a terminal, else a line
    per job); IMP matching is logged and the sweep run finished once they are done. Returns how
    the jobs ended (as a one-process run's `Outcome`) and a line per worker that exited with an error."""
    started = time.time()
    running = workers * max(1, len(gpus or []))
    problems: list[str] = []
    with store.sweep_lock(sweep.name):
        runner = Runner(tracker, store, progress=False)
        runner.dataset(sweep, dataset_of(sweep))  # a missing data set stops here, before any run
        experiment_id = tracker.experiment(sweep.experiment)
        tracker.mark_stale_running(sweep.name)
        run_id = runner.sweep_run(sweep, experiment_id)
        queue.create()

        def watched(plans: list[Plan], label: str, outcome: Outcome, more=None) -> None:
            """The workers run what the queue holds, watched (`watch`) until they are done."""
            watch = Watch(queue, sweep.name, plans, more)
            watch.progress = progress_for(tracker, plans, watch.done_before(), label, progress,
                                          make=partial(QueueProgress, workers=running),
                                          like=None if plans else build_plan(sweep))
            try:
                ended = drive(sweep, store, queue, workers, store_arg, tracking_uri, watch.poll, slurm=slurm, gpus=gpus)
                watch.next_poll = 0.0
                watch.poll()  # the last jobs' lines
            finally:
                watch.progress.close()
            problems.extend(ended["problems"])
            watch.settle(outcome)

        def run_batch(items: list[tuple[Plan, str]], outcome: Outcome) -> None:
            """Plans (a sweep's, or trials') into the store and the queue, then the workers."""
            plans = [plan for plan, _ in items]
            for plan in plans:
                store.save_plan(sweep.name, plan.trial, plan.to_dict())
                queue.enqueue(sweep.name, plan.trial, [j.to_dict() for j in plan.jobs],
                              set(runner.finished_in_tree(plan)))
            trials = [str(p.trial) for p in plans if p.trial is not None]
            watched(plans, sweep.name + (f" trial{'s' if len(trials) > 1 else ''} {', '.join(trials)}" if trials else ""),
                    outcome)

        outcome = Outcome(sweep_run=run_id)
        if sweep.search is not None and sweep.search.sampler != "grid":  # the workers ask and tell its trials
            from .search.study import study_trials
            from .worker_trials import open_trials, queued_plans

            open_now, retry_before = open_trials(sweep, runner, queue, experiment_id, outcome)
            if open_now or queue.open_work(sweep.name):
                watched(queued_plans(store, queue, sweep.name, set()), f"{sweep.name} search", outcome,
                        more=partial(queued_plans, store, queue, sweep.name))
            outcome.trials = study_trials(sweep, store.root)
            for t in outcome.trials:  # failed in this run (earlier ones: reported already)
                if t["state"] == "FAIL" and t["error"] and (retry_before is None or t["number"] >= retry_before):
                    outcome.failed.setdefault(f"trial {t['number']}", t["error"])
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
        if sweep.imp is not None and (outcome.computed or outcome.reused):
            log_matching(tracker, sweep.name, plan_hashes(sweep, store.root))
        if sweep.instability is not None and (outcome.computed or outcome.reused):
            log_summaries(tracker, sweep.name, current_of(sweep, store.root), run_id)
        tracker.finish(run_id, FAILED if outcome.failed else FINISHED if not outcome.left else "KILLED")
    outcome.seconds = time.time() - started
    return outcome, problems
