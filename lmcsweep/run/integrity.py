"""What a finished job leaves in the store for the jobs after it, and whether it is still there as
written: the check the runner makes before it trusts a finished job (a job whose outputs are
damaged or missing is computed again, its run tagged ``repaired``), and `lmcsweep verify`.

The outputs of a job: a dense network, its checkpoints at 0, at every rewind point and at the end;
a copy, its final checkpoint; an IMP level, its masks. An interpolation leaves only MLflow records.
"""

from __future__ import annotations

from pathlib import Path

from ..plan.graph import Plan
from ..plan.specs import Job
from ..store import Store, check_file, remove


def outputs(store: Store, plan: Plan, job: Job) -> list[Path]:
    """The files `job` of `plan` leaves for the jobs after it."""
    if job.kind == "train":
        its = sorted({0, plan.hyper.iterations, *job.spec.save_at})
        return [store.checkpoint_path(job.hash, it) for it in its]
    if job.kind == "branch":
        return [store.checkpoint_path(job.hash, job.spec.end)]
    if job.kind == "prune":
        return [store.job_dir(job.hash) / "mask.pt"]
    return []


def problems(store: Store, plan: Plan, job: Job) -> dict[str, str]:
    """file name -> 'damaged' or 'missing', for each output of `job` that is not as written."""
    found = {path.name: check_file(path) for path in outputs(store, plan, job)}
    return {name: state for name, state in found.items() if state in ("damaged", "missing")}


def describe(found: dict[str, str]) -> str:
    return ", ".join(f"{name} {state}" for name, state in sorted(found.items()))


def discard(store: Store, plan: Plan, job: Job, found: dict[str, str]) -> None:
    """Remove the damaged outputs of `job` (so nothing reads them before it is computed again)."""
    for path in outputs(store, plan, job):
        if found.get(path.name) == "damaged":
            remove(path)
