"""A random/tpe search on workers: the driver opens the study and the search's trial slots
(`open_trials`); a worker that finds no ready job asks the next trial itself (`next_trial`):
it takes a slot (`slots.take`: never more trials than the search has room for), asks Optuna on
the shared storage (TPE sees every finished trial there), plans the trial's variant, records the
plan in the store and queues its jobs; when a trial's last job has ended, the first worker to
see it tells Optuna its objective (or FAIL), once. Grid searches stay with the driver, which
enqueues every point before the workers start.
"""

from __future__ import annotations

from typing import Any

from . import slots
from .config import SweepConfig
from .plan.graph import plan_from_dict
from .queue import Queue
from .run.scheduler import Outcome, Runner
from .store import Store


def open_trials(sweep: SweepConfig, runner: Runner, queue: Queue, experiment_id: str,
                outcome: Outcome) -> tuple[int, int | None]:
    """The driver, before workers start: open (or create) the study, report what earlier runs
    settled, and open the search's slots for the trials still to ask. Trials an earlier run left in
    flight (a slot not told: its jobs queued, or its asker to be taken over) go on under their own
    numbers and MLflow runs; other RUNNING trials are failed as orphans and their points asked
    again. Returns how many trials are open (in flight or still to ask), and the number below which
    failed trials are asked again (`--retry-failed`; None: failures stand)."""
    from optuna.trial import TrialState

    from .search.driver import report_settled
    from .search.study import open_study, settled, settled_count, storage_url

    flying = slots.in_flight(queue, sweep.name)
    study, retry_before = open_study(sweep, runner.store.root, runner.retry_failed,
                                     keep={s["trial"] for s in flying if s["trial"] is not None})
    report_settled(sweep, study, runner.store, retry_before, outcome)
    trials, attrs = study.get_trials(deepcopy=False), study.user_attrs
    pending = [s for s in flying if s["trial"] is None or not settled(trials[s["trial"]], retry_before, attrs)]
    for s in pending:
        if s["trial"] is not None and s["run_id"] and trials[s["trial"]].state == TrialState.RUNNING:
            runner.tracker.reopen(s["run_id"])  # (marked KILLED when the driver started)
    more = max(0, sweep.search.trials - settled_count(study, retry_before) - len(pending))
    slots.open_search(queue, sweep.name, more, {
        "config": sweep.model_dump(mode="json"), "study": study.study_name,
        "storage": storage_url(sweep, runner.store.root), "experiment": experiment_id,
        "parent": outcome.sweep_run})
    return more + len(pending), retry_before


def next_trial(runner: Runner, store: Store, queue: Queue, owner: str, sweep: str | None = None) -> bool:
    """A worker with no ready job: tell a trial whose jobs have all ended, else ask one if a search
    has room. False when there was nothing to do."""
    slot = slots.to_tell(queue, owner, sweep)
    if slot is not None:
        _tell(runner, store, queue, owner, slot)
        return True
    slot = slots.take(queue, owner, sweep)
    if slot is not None:
        _ask(runner, store, queue, owner, slot)
        return True
    return False


def queued_plans(store: Store, queue: Queue, sweep: str, known: set) -> list:
    """The plans of the trials of `sweep` the workers have queued, those not in `known` (the
    driver's display takes them in as they come)."""
    plans = []
    for slot in slots.slots_of(queue, sweep):
        if slot["trial"] is None or slot["trial"] in known or slot["state"] == slots.ASKING:
            continue
        data = store.load_plan(sweep, slot["trial"])
        if data is not None:
            plans.append(plan_from_dict(data))
    return plans


def _study(slot: dict[str, Any]):
    from .search.study import load_study

    return SweepConfig.model_validate(slot["config"]), load_study(slot["study"], slot["storage"])


def _ask(runner: Runner, store: Store, queue: Queue, owner: str, slot: dict[str, Any]) -> None:
    from .search.driver import ask_trial, fail_trial
    from .search.study import orphan

    sweep, study = _study(slot)
    if slot["trial"] is not None:  # its worker died between asking and queueing
        orphan(study, slot["trial"])
    trial, trial_run, plan, problem = ask_trial(sweep, study, runner.tracker, slot["experiment"], slot["parent"])
    try:
        if not slots.asked(queue, owner, slot, trial.number, trial_run):
            raise slots.SlotLost("taken over")
        if plan is None:
            fail_trial(study, trial, runner.tracker, trial_run, problem)
            slots.told(queue, owner, slot)
            return
        store.save_plan(sweep.name, plan.trial, plan.to_dict())
        queue.enqueue(sweep.name, plan.trial, [j.to_dict() for j in plan.jobs], set(runner.finished_in_tree(plan)),
                      also=slots.queued(slot, owner))
    except slots.SlotLost:  # this worker was too slow (its lease expired): the slot is another's now
        orphan(study, trial.number)
        runner.tracker.finish(trial_run, "KILLED")


def _tell(runner: Runner, store: Store, queue: Queue, owner: str, slot: dict[str, Any]) -> None:
    from .records.objective import objective_value
    from .search.driver import fail_trial, tell_trial
    from .search.study import finished

    sweep, study = _study(slot)
    n = slot["trial"]
    if not finished(study, n):  # (a teller that died after telling: only the slot is left to close)
        data = store.load_plan(sweep.name, n)
        if data is None:
            fail_trial(study, n, runner.tracker, slot["run_id"], f"its plan is not in store {store.root}")
        else:
            try:
                tell_trial(study, n, runner.tracker, slot["run_id"], plan_from_dict(data),
                           slots.trial_failures(queue, sweep.name, n), set(), objective_value)
            except ValueError:  # Optuna: "Cannot tell a COMPLETE trial": told meanwhile (this
                # worker's lease had expired and another took the telling over)
                if not finished(study, n):
                    raise
    slots.told(queue, owner, slot)
