"""Running a search: ask, run and tell trials (the contract: `lmcsweep.search`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from ..config import ConfigError, SweepConfig
from ..plan.build import build_plan
from ..plan.graph import Plan
from ..run.context import pick_device
from ..run.runs import sweep_tags
from ..run.throughput import progress_for
from ..run.together import at_once
from ..store import check_file
from ..tracking import FAILED, FINISHED
from .space import decode_point, hp_params, suggest, variant
from .study import ERROR, RUN_ID, failure, open_study, sampler_for, settled, settled_count, study_trials


def trials_at_once(sweep: SweepConfig) -> int:
    """How many trials are asked and run together: with a grid or random sampler on CPU, as many as
    networks train at once (cores // train.cpu_threads), so every core has work from the first
    wave on; otherwise one. Their points never depend on it (a grid point is covered once, a
    random trial is seeded by its number); TPE's would (it learns from finished trials), so TPE
    asks one at a time, and so does a GPU, where networks train one after another anyway."""

    if sweep.search.sampler == "tpe":
        return 1
    return at_once(pick_device(sweep.train.device), sweep.train.cpu_threads, concurrent=not sweep.train.compile)


def trial_name(number: int, point: dict[str, Any]) -> str:
    """A trial run's name: its number and hyperparameters (``trial 2: lr=0.01 warmup=300it``)."""
    values = " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items())
    return f"trial {number}: {values}" if values else f"trial {number}"


def report_settled(sweep: SweepConfig, study: Any, store: Any, retry_before: int | None, outcome: Any) -> None:
    """What earlier runs settled: their jobs count as done (`outcome.skipped`), their failures are
    reported again (`outcome.failed["trial N"]`); a settled trial's plan file, damaged or deleted,
    is written again."""
    attrs = study.user_attrs
    for t in study.get_trials(deepcopy=False):
        if not settled(t, retry_before, attrs):
            continue
        if t.state == TrialState.FAIL:
            outcome.failed[f"trial {t.number}"] = failure(t, attrs)
            continue
        try:
            point = decode_point(sweep.search, t.params)
            plan = build_plan(variant(sweep, point), trial=t.number, overrides=hp_params(point), study=study.study_name)
        except ConfigError:
            continue
        outcome.skipped.extend(j.hash for j in plan.jobs)
        if check_file(store.plan_path(sweep.name, t.number)) in ("damaged", "missing"):
            store.save_plan(sweep.name, t.number, plan.to_dict())


def ask_trial(sweep: SweepConfig, study: Any, tracker: Any, experiment_id: str,
              parent: str) -> tuple[Any, str, Plan | None, str | None]:
    """Ask the study for one trial and open its MLflow run (under `parent`, the sweep's run).
    Returns (trial, its run, its plan, None), or (trial, its run, None, why it cannot run)."""
    search = sweep.search
    trial = study.ask()
    n = trial.number
    if search.sampler != "grid":  # seeded by the trial's number (workers asking at once differ);
        study.sampler = sampler_for(search, n)  # Optuna samples at the first suggest, not at ask
    try:
        point, problem = suggest(trial, search), None
    except ValueError as exc:  # e.g. a range both log and stepped
        point, problem = {}, f"invalid search space: {exc}"
    params = hp_params(point)
    trial_run = tracker.start(experiment_id, trial_name(n, point), "trial",
                              sweep_tags(sweep, {"trial": n, "study": study.study_name}),
                              parent=parent, params={f"hp.{k}": v for k, v in params.items()})
    trial.set_user_attr(RUN_ID, trial_run)
    if problem:
        return trial, trial_run, None, problem
    try:
        return trial, trial_run, build_plan(variant(sweep, point), trial=n, overrides=params,
                                            study=study.study_name), None
    except ConfigError as exc:
        return trial, trial_run, None, f"invalid variant: {exc}"


def fail_trial(study: Any, trial: Any, tracker: Any, trial_run: str, message: str) -> None:
    """Trial failed: recorded on its run and in the study (`trial`: the `Trial` asked, or its
    number when another process asked it; then the reason is the study's ``error <number>``)."""
    tracker.set_tags(trial_run, {"error": message[:5000]})
    tracker.log_text(trial_run, message, "error.txt")
    tracker.finish(trial_run, FAILED)
    if isinstance(trial, int):
        study.set_user_attr(f"{ERROR} {trial}", message[:5000])
    else:
        trial.set_user_attr(ERROR, message[:5000])
    study.tell(trial, state=TrialState.FAIL)


def tell_trial(study: Any, trial: Any, tracker: Any, trial_run: str, plan: Plan, outcome_failed: dict[str, str],
               blocked: Any, objective: Callable[[Any, Plan], float]) -> str | None:
    """Tell a trial whose jobs have all ended: FAIL if one failed (or was blocked) or the objective
    cannot be read (then the reason is returned), else its objective value."""
    hashes = [j.hash for j in plan.jobs]
    errors = [outcome_failed[h] for h in hashes if h in outcome_failed]
    stuck = [h for h in hashes if h in blocked]
    if errors or stuck:
        message = f"{len(errors)} jobs failed, {len(stuck)} blocked; first: {errors[0] if errors else ''}"
        fail_trial(study, trial, tracker, trial_run, message)
        return message
    try:
        value = objective(tracker, plan)
    except LookupError as exc:
        fail_trial(study, trial, tracker, trial_run, str(exc))
        return str(exc)
    if math.isfinite(value):
        tracker.log_metrics(trial_run, [("objective", value, 0)])
    tracker.set_tags(trial_run, {"objective": round(value, 12) if math.isfinite(value) else value})
    study.tell(trial, value)
    tracker.finish(trial_run, FINISHED)
    return None


def run_search(sweep: SweepConfig, runner: Any, experiment_id: str, outcome: Any,
               objective: Callable[[Any, Plan], float], at_once: int | None = None,
               run_batch: Callable[[list[tuple[Plan, str]], Any], None] | None = None) -> None:
    """Ask, run and tell trials until the grid is covered or `trials` trials have settled; up to
    `at_once` (default `trials_at_once`) at a time, run together by `run_batch((plan, trial run)
    pairs, outcome)` (default: `Runner.run_plans` in this process; the queue's workers for
    `lmcsweep run --workers`, for a grid). Only this process asks and tells, so each grid point is
    asked once however many workers run the trials (workers ask random/tpe trials themselves:
    `lmcsweep.worker_trials`). A finished trial's value is `objective(tracker, plan)`
    (LookupError: the trial fails). The caller holds the sweep lock and has marked RUNNING MLflow
    runs KILLED."""
    tracker, search = runner.tracker, sweep.search
    study, retry_before = open_study(sweep, runner.store.root, runner.retry_failed)
    grid = search.sampler == "grid"
    at_once = at_once or trials_at_once(sweep)

    report_settled(sweep, study, runner.store, retry_before, outcome)

    # Trials a killed run left RUNNING go on first, under their own numbers and MLflow runs (their
    # finished jobs are found done, an interrupted one resumes), so a kill changes no trial number.
    resumed = list(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def room() -> int:
        """How many trials to run now (0: the search is done)."""
        if grid:  # the trials resumed and the points open_study enqueued and not asked yet
            return min(at_once, len(resumed) + len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
        return min(at_once, search.trials - settled_count(study, retry_before))

    while (n_ask := room()) > 0:
        batch = []  # (trial, or a resumed trial's number; its MLflow run; its plan)
        while resumed and len(batch) < n_ask:
            t = resumed.pop(0)
            point, trial_run = decode_point(search, t.params), t.user_attrs[RUN_ID]
            tracker.reopen(trial_run)
            try:
                batch.append((t.number, trial_run, build_plan(variant(sweep, point), trial=t.number,
                                                              overrides=hp_params(point), study=study.study_name)))
            except ConfigError as exc:
                outcome.failed[f"trial {t.number}"] = f"invalid variant: {exc}"
                fail_trial(study, t.number, tracker, trial_run, f"invalid variant: {exc}")
        asks = n_ask - len(batch)
        if grid:
            asks = min(asks, len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
        for _ in range(asks):
            trial, trial_run, plan, problem = ask_trial(sweep, study, tracker, experiment_id, outcome.sweep_run)
            if plan is None:
                outcome.failed[f"trial {trial.number}"] = problem
                fail_trial(study, trial, tracker, trial_run, problem)
            else:
                batch.append((trial, trial_run, plan))
        if not batch:
            continue
        items = [(plan, trial_run) for _, trial_run, plan in batch]
        if run_batch is not None:
            run_batch(items, outcome)
        else:
            plans = [plan for _, _, plan in batch]
            done = set(tracker.done_jobs([j.hash for plan in plans for j in plan.jobs]))
            names = ", ".join(str(plan.trial) for plan in plans)
            shown = progress_for(tracker, plans, done, f"{sweep.name} trial{'s' if len(batch) > 1 else ''} {names}",
                                 runner.show_progress)
            try:
                runner.run_plans(items, experiment_id, outcome, shown)
            finally:
                shown.close()
        for trial, trial_run, plan in batch:
            message = tell_trial(study, trial, tracker, trial_run, plan, outcome.failed, outcome.blocked, objective)
            if message is not None and not any(j.hash in outcome.failed or j.hash in outcome.blocked
                                               for j in plan.jobs):
                outcome.failed[f"trial {plan.trial}"] = message  # (a failed job is listed already)
    outcome.trials = study_trials(sweep, runner.store.root)
