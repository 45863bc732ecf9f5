"""Optuna hyperparameter variants of a sweep: the `search` section. The only optuna importer.

A search is an Optuna study driven from outside with ask/tell. Each trial is one variant of the
sweep: the sweep file with the trial's values set at dotted paths (``train.lr``), validated again,
expanded by `build_plan` and run by the ordinary `Runner`, nested under an MLflow ``trial`` run
(tag ``lmcsweep.trial=<number>``, params ``hp.<dotted key>``). Jobs are still found by hash, so two
variants that share a job (or a plain sweep with the same settings) compute it once.

Contract:

- the study lives in ``<store>/optuna.db`` (SQLite) unless ``search.storage`` names another URL; it
  is created before anything runs and named ``<sweep>-<hash of the search-relevant config>``, so an
  edited search (or an edited base config) is a new study while raising ``trials`` continues one;
- the objective is read back from the stored query records of the trial's own jobs
  (`objective_value`), never from in-memory results;
- a trial left RUNNING by a killed process is marked FAIL (user attribute ``orphaned``) and its
  point is asked again; a trial that failed for a reason (invalid variant, failed job) carries the
  reason as user attribute ``error`` and is asked again only with ``--retry-failed``;
- a grid is covered exactly once: every point ends with one COMPLETE trial (or a failure),
  also across interruptions; random and tpe run until ``trials`` trials have settled;
- on CPU, grid and random trials are asked `trials_at_once` at a time and run together
  (`Runner.run_plans`); tpe, whose points depend on finished trials, asks one at a time.
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import GridSampler, RandomSampler, TPESampler
from optuna.trial import TrialState
from pydantic import BaseModel

from ..config import ConfigError, SearchConfig, SweepConfig, _Lines, apply_overrides, job_hash, validate
from ..seeds import derive_seed
from ..steps import Step
from ..store import sqlite_path
from ..plan.build import build_plan
from ..plan.graph import Plan, same_study, summary
from ..records.query import instability_records
from ..run.scheduler import pick_device
from ..tracking import FAILED, FINISHED, TAG, tag
from ..copies import at_once

optuna.logging.set_verbosity(optuna.logging.WARNING)

STABLE = 0.02  # the paper's threshold: stable if instability < 2%
ORPHANED, ERROR, RUN_ID = "orphaned", "error", "mlflow_run_id"

# --------------------------------------------------------------------------------------------
# The search space


def _leaf_types(annotation: Any) -> list[Any]:
    """The plain types inside an annotation (through Optional, Union, Annotated, list)."""
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(args[0])
    return [t for a in args for t in _leaf_types(a)]


def _is_integer_field(key: str) -> bool:
    """Whether the sweep-file field at dotted `key` holds an integer or a duration."""
    model: Any = SweepConfig
    annotation: Any = None
    for part in key.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        annotation = fields[part].annotation
        model = next((t for t in _leaf_types(annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)
    leaves = _leaf_types(annotation)
    return float not in leaves and (int in leaves or Step in leaves)


def _encode(value: Any) -> Any:
    """A choice as Optuna stores it: None/bool/int/float/str as is, anything else as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def suggest(trial: Any, search: SearchConfig) -> dict[str, Any]:
    """The trial's values for every key of the space (dotted key -> value for the sweep file)."""
    out = {}
    for key, spec in search.space.items():
        if isinstance(spec, list):
            encoded = [_encode(v) for v in spec]
            out[key] = spec[encoded.index(trial.suggest_categorical(key, encoded))]
        elif _is_integer_field(key) and float(spec.low).is_integer() and float(spec.high).is_integer() \
                and (spec.step is None or float(spec.step).is_integer()):
            out[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            out[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return out


def hp_params(overrides: dict[str, Any]) -> dict[str, Any]:
    """A variant's values as they are logged (``hp.<key>``; lists and mappings as JSON)."""
    return {key: (json.dumps(v) if isinstance(v, (list, dict)) else v) for key, v in overrides.items()}


def grid_points(search: SearchConfig) -> list[dict[str, Any]]:
    """Every point of a grid, in the order the space is written."""
    import itertools

    keys = list(search.space)
    return [dict(zip(keys, values)) for values in itertools.product(*(search.space[k] for k in keys))]


def variant(sweep: SweepConfig, overrides: dict[str, Any]) -> SweepConfig:
    """The sweep with `overrides` applied to its file's values and checked again (ConfigError if bad)."""
    raw = apply_overrides(sweep.model_dump(mode="json", exclude_unset=True), overrides)
    where = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return validate(raw, _Lines(), f"{sweep.name} [{where}]", space=False)


# --------------------------------------------------------------------------------------------
# The study


# Fields added to the sweep file after studies were made: left out of a study's name at their
# default, so adding them did not rename (and orphan) existing studies.
NEWER_FIELDS = (("instability", "pairs", "all"), ("instability", "schedule", "continue"))


def study_name(sweep: SweepConfig) -> str:
    """`<sweep>-<hash>` of what decides the trials' results: the search (less `trials` and `storage`)
    and the base config (less names, cadences, paths and the device)."""
    base = sweep.model_dump(mode="json")
    for key in ("name", "experiment", "search"):
        base.pop(key, None)
    for section, key, default in NEWER_FIELDS:  # at their defaults, as if the field did not exist
        if (base.get(section) or {}).get(key, default) == default:
            (base.get(section) or {}).pop(key, None)
    for key in ("eval_every", "checkpoint_every", "device", "compile"):
        base["train"].pop(key, None)
    for key in ("root", "download", "loader"):
        base["data"].pop(key, None)
    search = sweep.search.model_dump(mode="json", exclude={"trials", "storage"})
    return f"{sweep.name}-{job_hash('study', {'base': base, 'search': search}).split('_')[1][:10]}"


def storage_url(sweep: SweepConfig, store_root: str | Path) -> str:
    return sweep.search.storage or f"sqlite:///{Path(store_root).resolve() / 'optuna.db'}"


class _Grid(GridSampler):
    """GridSampler whose notion of a visited point fits resuming: a point is covered by a COMPLETE
    trial or by a trial that failed for a reason (unless those are being retried); points of trials
    orphaned by a kill are free again. It never calls `study.stop()` (the loop is driven outside)."""

    def __init__(self, search_space: dict[str, list[Any]], seed: int, retry_before: int | None = None):
        super().__init__(search_space, seed=seed)
        self.retry_before = retry_before  # trials numbered below this that failed are asked again

    def after_trial(self, study, trial, state, values) -> None:
        pass

    def _get_unvisited_grid_ids(self, study) -> list[int]:
        free, running = self._free(study)
        return sorted(free - running or free)

    def open_points(self, study) -> int:
        """How many points are neither covered nor being run (what trials asked now would get)."""
        free, running = self._free(study)
        return len(free - running)

    def _free(self, study) -> tuple[set[int], set[int]]:
        visited, running = set(), set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if "grid_id" not in t.system_attrs or not self._same_search_space(t.system_attrs["search_space"]):
                continue
            if _settled(t, self.retry_before):
                visited.add(t.system_attrs["grid_id"])
            elif t.state == TrialState.RUNNING:
                running.add(t.system_attrs["grid_id"])
        return set(range(self._n_min_trials)) - visited, running


def _settled(t: Any, retry_before: int | None) -> bool:
    """Whether trial `t` covers its point: COMPLETE, or failed for a reason not being retried."""
    if t.state == TrialState.COMPLETE:
        return True
    failed = t.state == TrialState.FAIL and ERROR in t.user_attrs
    return failed and not (retry_before is not None and t.number < retry_before)


def _sampler(search: SearchConfig, number: int = 0):
    """The sampler that asks trial `number`. random/tpe are seeded per trial (from search.seed and
    the trial number), so a resumed study does not replay the first points of its seed."""
    if search.sampler == "grid":
        space = {k: [_encode(v) for v in values] for k, values in search.space.items()}
        return _Grid(space, seed=search.seed)
    seed = derive_seed("search", search.seed, number) % 2**31
    if search.sampler == "random":
        return RandomSampler(seed=seed)
    return TPESampler(seed=seed)


def _point(t: Any) -> dict[str, Any]:
    return dict(t.params) or dict(t.system_attrs.get("fixed_params", {}))


def _fail_orphans(study: Any) -> list[int]:
    """Trials left RUNNING (by a killed process: the caller holds the sweep lock) -> FAIL."""
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, ORPHANED, True)
        study.tell(t.number, state=TrialState.FAIL)
        numbers.append(t.number)
    return numbers


def _requeue(study: Any, retry_before: int | None) -> None:
    """random/tpe: ask again the point of each orphaned (or retried) trial, once."""
    trials = study.get_trials(deepcopy=False)
    latest: dict[str, Any] = {}
    for t in trials:
        key = json.dumps(_point(t), sort_keys=True)
        if _point(t):
            latest[key] = t
    for key, t in latest.items():
        if t.state == TrialState.FAIL and not _settled(t, retry_before):
            study.enqueue_trial(json.loads(key))


def open_study(sweep: SweepConfig, store_root: str | Path, retry_failed: bool = False):
    """The sweep's study, created if new, with orphaned trials marked failed and (random/tpe) their
    points queued again. Returns (study, retry_before): failed trials numbered below `retry_before`
    are asked again (None: failures stand)."""
    search = sweep.search
    url = storage_url(sweep, store_root)
    if (db := sqlite_path(url)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    sampler = _sampler(search)
    study = optuna.create_study(storage=url, study_name=study_name(sweep), load_if_exists=True,
                                direction=search.objective.direction, sampler=sampler)
    _fail_orphans(study)
    retry_before = len(study.get_trials(deepcopy=False)) if retry_failed else None
    if isinstance(sampler, _Grid):
        sampler.retry_before = retry_before
    else:
        _requeue(study, retry_before)
    return study, retry_before


def _settled_count(study: Any, retry_before: int | None) -> int:
    return sum(_settled(t, retry_before) for t in study.get_trials(deepcopy=False))


# --------------------------------------------------------------------------------------------
# Plans (for `lmcsweep plan`, `run --dry-run`, `status`)


def trial_plans(sweep: SweepConfig, store_root: str | Path | None = None) -> list[Plan]:
    """The plans of the sweep's variants: every point of a grid; for random/tpe `trials` trials,
    those the study has asked so far (when `store_root` holds it) and then the seeded sampler's
    next points. Variants that are not valid configs are left out (running them fails the trial)."""
    search = sweep.search
    if search.sampler == "grid":
        points = grid_points(search)
    else:
        asked = []
        study = _existing_study(sweep, store_root)
        if study is not None:
            asked = [t for t in study.get_trials(deepcopy=False) if _point(t)
                     and t.user_attrs.get(ORPHANED) is None and t.state != TrialState.RUNNING]
        points = [_decode_point(search, _point(t)) for t in asked][:search.trials]
        dry = optuna.create_study(direction=search.objective.direction)
        for i in range(search.trials):
            dry.sampler = _sampler(search, i)
            trial = dry.ask()
            values = suggest(trial, search)
            if i >= len(points):
                points.append(values)
    plans = []
    for n, point in enumerate(points):
        try:
            plans.append(build_plan(variant(sweep, point), trial=n, overrides=hp_params(point)))
        except ConfigError:
            continue
    return plans


def _decode_point(search: SearchConfig, params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        spec = search.space.get(key)
        if isinstance(spec, list):
            encoded = [_encode(v) for v in spec]
            out[key] = spec[encoded.index(value)] if value in encoded else value
        else:
            out[key] = value
    return out


def _existing_study(sweep: SweepConfig, store_root: str | Path | None):
    """The study if it exists already (never creates a database or a study)."""
    if store_root is None and not sweep.search.storage:
        return None
    url = storage_url(sweep, store_root or ".")
    if (db := sqlite_path(url)) is not None and not db.exists():
        return None
    try:
        return optuna.load_study(study_name=study_name(sweep), storage=url)
    except KeyError:
        return None


# --------------------------------------------------------------------------------------------
# The objective, read back from the store


def objective_value(tracker: Any, plan: Plan) -> float:
    """The objective of a finished trial from the stored records of exactly its plan's jobs."""

    sweep, objective = plan.sweep, plan.sweep.search.objective
    hashes = {j.hash for j in plan.jobs}
    runs = [r for r in tracker.search(f"tags.`{TAG}sweep` = '{sweep.name}' and tags.`{TAG}trial` = '{plan.trial}' "
                                      f"and attributes.status = '{FINISHED}'")
            if tag(r, "job") in hashes and same_study(tag(r, "study"), plan.study)]
    control = None if objective.control == "none" else objective.control
    ipe = plan.hyper.iterations_per_epoch

    if objective.metric in ("accuracy", "error"):
        kind = "train" if objective.level is None else "branch"
        values = []
        for r in runs:
            if tag(r, "kind") != kind or "final_test_accuracy" not in r.data.metrics:
                continue
            if kind == "branch":
                if tag(r, "level") != str(objective.level) or tag(r, "control") != control:
                    continue
                if objective.rewind is not None and tag(r, "rewind") != str(objective.rewind.to_iterations(ipe)):
                    continue
            values.append(r.data.metrics["final_test_accuracy"])
        if not values:
            raise LookupError(f"objective {objective.metric}: no finished {kind} runs"
                              + (f" at level {objective.level}" if objective.level is not None else ""))
        accuracy = sum(values) / len(values)
        return accuracy if objective.metric == "accuracy" else 1.0 - accuracy

    ids = {r.info.run_id for r in runs if tag(r, "kind") == "interpolate"}
    records = [r for r in instability_records(tracker, sweep.name, plan.trial)
               if r["run_id"] in ids and r["split"] == objective.split and r["level"] == objective.level
               and r["control"] == control]
    by_rewind: dict[int, list[float]] = {}
    for r in records:
        by_rewind.setdefault(r["rewind"], []).append(r["instability"])
    if objective.metric == "earliest_stable":
        return earliest_stable(by_rewind)
    k = (objective.rewind.to_iterations(ipe) if objective.rewind is not None
         else min(s.to_iterations(ipe) for s in sweep.instability.rewind) if sweep.instability else 0)
    if k not in by_rewind:
        raise LookupError(f"objective instability: no {objective.split} records at rewind {k}"
                          + (f", level {objective.level}" if objective.level is not None else ""))
    return sum(by_rewind[k]) / len(by_rewind[k])


def earliest_stable(by_rewind: dict[int, list[float]]) -> float:
    """The first rewind point k from which on the network is stable: the mean instability of the
    pairs is below 2% at k and at every later rewind point measured. inf if there is none (a point
    that dips below 2% before an unstable one does not count)."""
    unstable = [k for k, v in by_rewind.items() if sum(v) / len(v) >= STABLE]
    stable = [k for k in by_rewind if not any(u >= k for u in unstable)]
    return float(min(stable)) if stable else math.inf


# --------------------------------------------------------------------------------------------
# Running a search


def trials_at_once(sweep: SweepConfig) -> int:
    """How many trials are asked and run together: with a grid or random sampler on CPU, as many as
    networks train at once (cores // train.cpu_threads), so every core has work from the first
    wave on; otherwise one. Their points never depend on it (a grid point is covered once, a
    random trial is seeded by its number); TPE's would (it learns from finished trials), so TPE
    asks one at a time, and so does a GPU, where networks train one after another anyway."""

    if sweep.search.sampler == "tpe":
        return 1
    return at_once(pick_device(sweep.train.device), sweep.train.cpu_threads, concurrent=not sweep.train.compile)


def run_search(sweep: SweepConfig, runner: Any, experiment_id: str, outcome: Any) -> None:
    """Ask, run and tell trials until the grid is covered or `trials` trials have settled; up to
    `trials_at_once` at a time, run together (`Runner.run_plans`). The caller holds the sweep lock
    and has marked RUNNING MLflow runs KILLED."""
    from tqdm.auto import tqdm


    tracker, search = runner.tracker, sweep.search
    study, retry_before = open_study(sweep, runner.store.root, runner.retry_failed)
    grid = study.sampler if isinstance(study.sampler, _Grid) else None
    at_once = trials_at_once(sweep)

    # What earlier runs settled: their jobs count as done, their failures are reported again.
    for t in study.get_trials(deepcopy=False):
        if not _settled(t, retry_before):
            continue
        if t.state == TrialState.FAIL:
            outcome.failed[f"trial {t.number}"] = t.user_attrs[ERROR]
        else:
            try:
                plan = build_plan(variant(sweep, _decode_point(search, t.params)), trial=t.number)
                outcome.skipped.extend(j.hash for j in plan.jobs)
            except ConfigError:
                pass

    def room() -> int:
        """How many trials to ask now (0: the search is done)."""
        if grid is not None:
            return min(at_once, grid.open_points(study))
        return min(at_once, search.trials - _settled_count(study, retry_before))

    def fail(trial: Any, trial_run: str, message: str, listed: bool = False) -> None:
        """Trial failed: recorded on its run and in the study; in the outcome unless its jobs are (`listed`)."""
        if not listed:
            outcome.failed[f"trial {trial.number}"] = message
        tracker.set_tags(trial_run, {"error": message[:5000]})
        tracker.log_text(trial_run, message, "error.txt")
        tracker.finish(trial_run, FAILED)
        trial.set_user_attr(ERROR, message[:5000])
        study.tell(trial, state=TrialState.FAIL)

    while (n_ask := room()) > 0:
        batch = []  # (trial, its MLflow run, its plan)
        for _ in range(n_ask):
            if grid is None:
                study.sampler = _sampler(search, len(study.get_trials(deepcopy=False)))
            trial = study.ask()
            n = trial.number
            try:
                point, problem = suggest(trial, search), None
            except ValueError as exc:  # e.g. a range both log and stepped
                point, problem = {}, f"invalid search space: {exc}"
            params = hp_params(point)
            trial_run = tracker.start(experiment_id, f"trial {n}", "trial",
                                      runner._tags(sweep, {"trial": n, "study": study.study_name}),
                                      parent=outcome.sweep_run, params={f"hp.{k}": v for k, v in params.items()})
            trial.set_user_attr(RUN_ID, trial_run)
            if problem:
                fail(trial, trial_run, problem)
                continue
            try:
                batch.append((trial, trial_run, build_plan(variant(sweep, point), trial=n, overrides=params,
                                                           study=study.study_name)))
            except ConfigError as exc:
                fail(trial, trial_run, f"invalid variant: {exc}")
        if not batch:
            continue
        plans = [plan for _, _, plan in batch]
        done = set(tracker.done_jobs([j.hash for plan in plans for j in plan.jobs]))
        left = summary(plans, done)["iterations_remaining"]
        names = ", ".join(str(trial.number) for trial, _, _ in batch)
        bar = tqdm(total=left, unit="it", disable=not runner.show_progress or left == 0, dynamic_ncols=True,
                   mininterval=0.5, desc=f"trial{'s' if len(batch) > 1 else ''} {names}")
        try:
            runner.run_plans([(plan, trial_run) for _, trial_run, plan in batch], experiment_id, outcome, bar)
        finally:
            bar.close()
        for trial, trial_run, plan in batch:
            hashes = [j.hash for j in plan.jobs]
            errors = [outcome.failed[h] for h in hashes if h in outcome.failed]
            blocked = [h for h in hashes if h in outcome.blocked]
            if errors or blocked:
                message = f"{len(errors)} jobs failed, {len(blocked)} blocked; first: {errors[0] if errors else ''}"
                fail(trial, trial_run, message, listed=True)
                continue
            try:
                value = objective_value(tracker, plan)
            except LookupError as exc:
                fail(trial, trial_run, str(exc))
                continue
            if math.isfinite(value):
                tracker.log_metrics(trial_run, [("objective", value, 0)])
            tracker.set_tags(trial_run, {"objective": value})
            study.tell(trial, value)
            tracker.finish(trial_run, FINISHED)


def study_trials(sweep: SweepConfig, store_root: str | Path) -> list[dict[str, Any]]:
    """The study's trials as plain records (read only; [] when there is no study yet)."""
    study = _existing_study(sweep, store_root)
    if study is None:
        return []
    return [{"number": t.number, "state": t.state.name, "params": _decode_point(sweep.search, _point(t)),
             "value": t.value, **{k: t.user_attrs.get(k) for k in (RUN_ID, ERROR, ORPHANED)}}
            for t in study.get_trials(deepcopy=False)]
