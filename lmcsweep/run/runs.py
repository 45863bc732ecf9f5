"""The MLflow runs of a sweep's jobs: their tags and params, the sweep run, a tree's runs by job
hash, and the run that records a job reused from elsewhere.

Every run carries, as tags, what is needed to filter it without its parents (`job_tags`), and as
params the settings and seeds it ran with (`job_params`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import SweepConfig, dataset_of
from ..identity import canonical, job_hash, sweep_fingerprint
from ..plan.graph import Plan, same_study
from ..plan.specs import Job
from ..tracking import FAILED, FINISHED, Tracker, tag
from .bodies import KINDS
from .context import pick_device


AXES = ("replicate", "rewind", "level", "density", "control", "copy", "pair")


def sweep_tags(sweep: SweepConfig, extra: dict[str, Any]) -> dict[str, Any]:
    return {"sweep": sweep.name, "preset": sweep.preset, "dataset": dataset_of(sweep), **extra}


def job_tags(plan: Plan, job: Job) -> dict[str, Any]:
    t = {k: v for k, v in job.tags.items() if v is not None}
    t["job"] = job.hash
    if plan.trial is not None:
        t["trial"] = plan.trial
    if plan.study is not None:
        t["study"] = plan.study
    return sweep_tags(plan.sweep, t)


def job_params(plan: Plan, job: Job, provenance: dict[str, str], group: int = 1) -> dict[str, Any]:
    """The params of a job's run: resolved settings, data, provenance, device, the trial's
    hyperparameters, its spec (seeds as ``seed.*``, the rest as ``job.*``), instability options."""
    h = plan.hyper
    params = {f"train.{k}": v for k, v in h.__dict__.items()}
    device = pick_device(plan.sweep.train.device)
    if KINDS[job.kind].trains:  # networks trained with it (side by side on CPU; not in its identity)
        params["train.group"] = group if device.type == "cpu" and not h.compile else 1
    params.update({f"data.{k}": v for k, v in plan.sweep.data.model_dump(mode="json").items() if v is not None})
    params.update(provenance)
    params["device"] = str(device)
    params["torch_threads"] = torch.get_num_threads()  # evaluation's; training's is train.cpu_threads
    params.update({f"hp.{k}": v for k, v in plan.overrides.items()})
    # where the job sits in the sweep, also as params: MLflow's chart and compare views take params
    # (not tags) as axes
    params.update({k: v for k, v in job.tags.items() if k in AXES and v is not None})
    for key, value in job.spec.recorded().items():
        if key == "seeds":
            params.update({f"seed.{k}": v for k, v in value.items()})
        elif key not in ("hyper", "data"):
            params[f"job.{key}"] = canonical(value) if isinstance(value, (dict, list)) else value
    if plan.sweep.instability is not None:
        inst = plan.sweep.instability
        params.update({"instability.optimizer": inst.optimizer, "instability.schedule": inst.schedule,
                       "instability.pairs": inst.pairs, "instability.bn": inst.bn,
                       "instability.noise": ",".join(inst.noise)})
        if inst.align != "none":  # (only when set: runs of other sweeps keep their params)
            params.update({"instability.align": inst.align, "instability.align_batches": inst.align_batches})
        if inst.init != "shared":
            params["instability.init"] = inst.init
    return params


def open_sweep_run(tracker: Tracker, sweep: SweepConfig, experiment_id: str, provenance: dict[str, str]) -> str:
    """The sweep's run in `experiment_id`, made if missing, else reopened (RUNNING); the config it
    runs with is recorded on it (config.json, or config-<digest>.json after an edit)."""
    runs = tracker.runs_of_sweep(sweep.name, kind="sweep")
    runs = [r for r in runs if r.info.experiment_id == experiment_id]
    fingerprint = sweep_fingerprint(sweep)
    digest = job_hash("sweep", fingerprint)
    if runs:
        run = runs[0]
        if tag(run, "job") != digest:
            tracker.set_tags(run.info.run_id, {"job": digest})
            tracker.log_dict(run.info.run_id, fingerprint, f"config-{digest}.json")
        tracker.reopen(run.info.run_id)
        return run.info.run_id
    run_id = tracker.start(experiment_id, sweep.name, "sweep", sweep_tags(sweep, {"job": digest}),
                           params={**provenance, "replicates": sweep.replicates, "seed": sweep.seed})
    tracker.log_dict(run_id, fingerprint, "config.json")
    return run_id


def tree_runs(tracker: Tracker, sweep: str, trial: int | None, study: str | None = None) -> dict[str, dict[str, str]]:
    """This sweep's (trial's) runs by job hash: finished (run ids), and failed (errors). A trial's
    are those of its study: trial n of an earlier study of an edited search is another trial."""
    finished, failed = {}, {}
    for run in tracker.runs_of_sweep(sweep):
        if tag(run, "trial") != (None if trial is None else str(trial)):
            continue
        if not same_study(tag(run, "study"), study):
            continue
        job = tag(run, "job")
        if not job:
            continue
        if run.info.status == FINISHED:
            finished[job] = run.info.run_id
        elif run.info.status == FAILED:
            failed[job] = tag(run, "error", "failed")
    return {"finished": finished, "failed": {j: e for j, e in failed.items() if j not in finished}}


def record_reuse(tracker: Tracker, experiment_id: str, job: Job, tags: dict[str, Any], parent: str,
                 original: str, params: dict[str, Any], extra: list[tuple[str, float, int]] = ()) -> str:
    """A run standing for a job computed elsewhere (run `original`): its metrics (and `extra`
    ones), nothing recomputed."""
    run_id = tracker.start(experiment_id, job.name, KINDS[job.kind].run_kind,
                           {**tags, "origin": "reused", "reused_from": original}, parent=parent, params=params)
    tracker.log_metrics(run_id, tracker.metric_history(original) + list(extra))
    tracker.finish(run_id, FINISHED)
    return run_id
