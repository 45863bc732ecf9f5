"""The Optuna study of a search: its name and storage, which trials cover a point, orphaned and
retried trials asked again, and read-only views of it (`trial_plans`, `study_trials`).

Only Optuna's public API: a grid is its points enqueued (`study.enqueue_trial`) and popped by
`study.ask()`, with a sampler that samples nothing itself; an orphan is told FAIL by its number and
listed in the study's user attribute ``orphaned``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import TrialState

from ..config import ConfigError, SearchConfig, SweepConfig
from ..identity import job_hash
from ..plan.build import build_plan
from ..plan.graph import Plan
from ..seeds import derive_seed
from ..store import sqlite_path
from .space import decode_point, encode_point, grid_points, hp_params, suggest, variant

optuna.logging.set_verbosity(optuna.logging.WARNING)

# user attributes: of a trial (ORPHANED also of the study: the numbers of its orphaned trials)
ORPHANED, ERROR, RUN_ID, POINT = "orphaned", "error", "mlflow_run_id", "point"

# Fields added to the sweep file after studies were made: left out of a study's name at their
# default, so adding them did not rename (and orphan) existing studies.
NEWER_FIELDS = (("instability", "pairs", "all"), ("instability", "schedule", "continue"), ("instability", "align", "none"),
                ("instability", "align_batches", 4), ("instability", "init", "shared"), ("train", "deterministic", True))


def study_name(sweep: SweepConfig) -> str:
    """`<sweep>-<hash>` of what decides the trials' results: the search (less `trials` and `storage`)
    and the base config (less names, cadences, paths and the device)."""
    base = sweep.model_dump(mode="json")
    for key in ("name", "experiment", "search", "slurm"):
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


class EnqueuedOnly(BaseSampler):
    """A grid's sampler: trials get the points `open_study` enqueued (each one once, also when
    several are asked at a time, which Optuna's GridSampler does not promise); it samples nothing."""

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        raise RuntimeError(f"grid trial {trial.number} was not enqueued: no value for {param_name}")


def sampler_for(search: SearchConfig, number: int = 0) -> BaseSampler:
    """The sampler that asks trial `number`. random/tpe are seeded per trial (from search.seed and
    the trial number), so a resumed study does not replay the first points of its seed."""
    if search.sampler == "grid":
        return EnqueuedOnly()
    seed = derive_seed("search", search.seed, number) % 2**31
    if search.sampler == "random":
        return RandomSampler(seed=seed)
    return TPESampler(seed=seed)


def point_of(t: Any) -> dict[str, Any]:
    """A trial's params; for one not suggested yet (WAITING), the point it was enqueued with."""
    if t.params:
        return dict(t.params)
    if POINT in t.user_attrs:
        return dict(t.user_attrs[POINT])
    # points enqueued before POINT was recorded: no public API reads Optuna's internal key
    return dict(t.system_attrs.get("fixed_params", {}))


def _key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def _enqueue(study: Any, params: dict[str, Any]) -> None:
    study.enqueue_trial(params, user_attrs={POINT: params})


def failure(t: Any, study_attrs: dict[str, Any] | None = None) -> str | None:
    """Why trial `t` failed: its user attribute ``error``, or, told by a worker that did not ask it
    or resumed after a kill (Optuna sets a trial's attributes only through the `Trial` that asked
    it), the study's ``error <number>`` (one attribute per trial: processes writing at once never
    overwrite each other's)."""
    return t.user_attrs.get(ERROR) or (study_attrs or {}).get(f"{ERROR} {t.number}")


def settled(t: Any, retry_before: int | None, study_attrs: dict[str, Any] | None = None) -> bool:
    """Whether trial `t` covers its point: COMPLETE, or failed for a reason not being retried."""
    if t.state == TrialState.COMPLETE:
        return True
    failed = t.state == TrialState.FAIL and failure(t, study_attrs) is not None
    return failed and not (retry_before is not None and t.number < retry_before)


def settled_count(study: Any, retry_before: int | None) -> int:
    attrs = study.user_attrs
    return sum(settled(t, retry_before, attrs) for t in study.get_trials(deepcopy=False))


def resumable(t: Any) -> bool:
    """Whether a trial left RUNNING by a killed run can go on under its own number: it has its
    point and its MLflow run (a kill between asking and either leaves it to be failed and asked again)."""
    return bool(t.params) and RUN_ID in t.user_attrs


def orphans(study: Any) -> set[int]:
    """The numbers of the study's orphaned trials (also those marked on the trial, by earlier versions)."""
    marked = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ORPHANED)}
    by_worker = {int(k.split()[1]) for k in study.user_attrs if k.startswith(f"{ORPHANED} ")}  # `orphan()`
    return marked | set(study.user_attrs.get(ORPHANED, [])) | by_worker


def orphan(study: Any, number: int) -> None:
    """Trial `number`, asked by a worker killed before it queued its jobs, -> FAIL, marked orphaned
    (by a study attribute of its own: workers marking at once never overwrite each other's)."""
    study.set_user_attr(f"{ORPHANED} {number}", True)
    if study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL)


def fail_orphans(study: Any, keep: set[int] | None = None) -> list[int]:
    """Trials left RUNNING by a killed process (the caller holds the sweep lock) that cannot be
    resumed -> FAIL, listed in the study's ``orphaned`` first (Optuna has no public way to set a
    user attribute of a trial this process did not ask). Resumed: those in `keep` (the trials whose
    jobs the workers' queue holds) or, without `keep`, those that have their point and MLflow run
    (`resumable`): the search goes on with them under their own numbers (`search.driver`)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    numbers = [t.number for t in running if (not resumable(t) if keep is None else t.number not in keep)]
    if numbers:
        study.set_user_attr(ORPHANED, sorted(set(study.user_attrs.get(ORPHANED, [])) | set(numbers)))
    for number in numbers:
        study.tell(number, state=TrialState.FAIL)
    return numbers


def _enqueue_grid(study: Any, search: SearchConfig, retry_before: int | None) -> None:
    """Enqueue every grid point neither covered (`settled`) nor waiting already."""
    attrs = study.user_attrs
    taken = {_key(point_of(t)) for t in study.get_trials(deepcopy=False)
             if settled(t, retry_before, attrs) or t.state in (TrialState.WAITING, TrialState.RUNNING)}
    for point in grid_points(search):
        params = encode_point(search, point)
        if _key(params) not in taken:
            taken.add(_key(params))
            _enqueue(study, params)


def _requeue(study: Any, retry_before: int | None) -> None:
    """random/tpe: ask again the point of each orphaned (or retried) trial, once."""
    latest: dict[str, Any] = {}
    attrs = study.user_attrs
    for t in study.get_trials(deepcopy=False):
        if point_of(t):
            latest[_key(point_of(t))] = t
    for key, t in latest.items():
        if t.state == TrialState.FAIL and not settled(t, retry_before, attrs):
            _enqueue(study, json.loads(key))


def open_study(sweep: SweepConfig, store_root: str | Path, retry_failed: bool = False,
               keep: set[int] | None = None):
    """The sweep's study, created if new, with orphaned trials marked failed (`fail_orphans`, which
    resumes those in `keep`) and the points to ask queued: a grid's uncovered points, or
    (random/tpe) those of orphaned or retried trials. Returns (study, retry_before): failed trials
    numbered below `retry_before` are asked again (None: failures stand)."""
    search = sweep.search
    url = storage_url(sweep, store_root)
    if sqlite_path(url) is not None:
        sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=url, study_name=study_name(sweep), load_if_exists=True,
                                direction=search.objective.direction, sampler=sampler_for(search))
    fail_orphans(study, keep)
    retry_before = len(study.get_trials(deepcopy=False)) if retry_failed else None
    if search.sampler == "grid":
        _enqueue_grid(study, search, retry_before)
    else:
        _requeue(study, retry_before)
    return study, retry_before


def existing_study(sweep: SweepConfig, store_root: str | Path | None):
    """The study if it exists already (never creates a database or a study)."""
    if store_root is None and not sweep.search.storage:
        return None
    url = storage_url(sweep, store_root or ".")
    if sqlite_path(url) is not None and not sqlite_path(url).exists():
        return None
    try:
        return optuna.load_study(study_name=study_name(sweep), storage=url)
    except KeyError:
        return None


def trial_plans(sweep: SweepConfig, store_root: str | Path | None = None) -> list[Plan]:
    """The plans of the sweep's variants: every point of a grid; for random/tpe `trials` trials,
    those the study has asked so far (when `store_root` holds it) and then the seeded sampler's
    next points. Variants that are not valid configs are left out (running them fails the trial)."""
    search = sweep.search
    if search.sampler == "grid":
        points = grid_points(search)
    else:
        asked = []
        study = existing_study(sweep, store_root)
        if study is not None:
            orphaned = orphans(study)
            asked = [t for t in study.get_trials(deepcopy=False) if point_of(t)
                     and t.number not in orphaned and (t.state != TrialState.RUNNING or resumable(t))]
        points = [decode_point(search, point_of(t)) for t in asked][:search.trials]
        dry = optuna.create_study(direction=search.objective.direction)
        for i in range(search.trials):
            dry.sampler = sampler_for(search, i)
            values = suggest(dry.ask(), search)
            if i >= len(points):
                points.append(values)
    plans = []
    for n, point in enumerate(points):
        try:
            plans.append(build_plan(variant(sweep, point), trial=n, overrides=hp_params(point)))
        except ConfigError:
            continue
    return plans


def study_trials(sweep: SweepConfig, store_root: str | Path) -> list[dict[str, Any]]:
    """The study's trials as plain records (read only; [] when there is no study yet)."""
    study = existing_study(sweep, store_root)
    if study is None:
        return []
    orphaned, attrs = orphans(study), study.user_attrs
    return [{"number": t.number, "state": t.state.name, "params": decode_point(sweep.search, point_of(t)),
             "value": t.value, RUN_ID: t.user_attrs.get(RUN_ID), ERROR: failure(t, attrs),
             ORPHANED: True if t.number in orphaned else None}
            for t in study.get_trials(deepcopy=False)]


def load_study(name: str, storage: str):
    """A study the driver made (workers open it by name and storage, never create it)."""
    return optuna.load_study(study_name=name, storage=storage)


def finished(study: Any, number: int) -> bool:
    """Whether trial `number` has been told (COMPLETE or FAIL)."""
    return study.get_trials(deepcopy=False)[number].state in (TrialState.COMPLETE, TrialState.FAIL)
