"""A sweep expanded into its job graph (`build_plan`): the dense networks, their instability
analyses (`graph.add_instability`) and IMP chains (`imp.add_imp`)."""

from __future__ import annotations

from typing import Any

from ..config import SweepConfig, resolve
from ..identity import job_hash
from .graph import Plan, add_instability, data_identity, replicate_seed, rewind_iterations, run_name
from .imp import add_imp
from .specs import Job, TrainSpec


def build_plan(sweep: SweepConfig, trial: int | None = None, overrides: dict[str, Any] | None = None,
               study: str | None = None) -> Plan:
    """Expand one sweep (one Optuna variant when `trial` is set, of `study`) into its jobs, parents first."""
    hyper = resolve(sweep)
    plan = Plan(sweep=sweep, hyper=hyper, trial=trial, overrides=dict(overrides or {}), study=study)
    data = data_identity(sweep, hyper)
    inst = sweep.instability
    points = rewind_iterations(sweep, hyper)
    for r in range(sweep.replicates):
        seed = replicate_seed(sweep, r)
        spec = TrainSpec(hyper=hyper.identity(), data=data,
                         seeds={"init": seed, "data_order": seed, "augmentation": seed}, save_at=points)
        train = plan.add(Job(
            kind="train", hash=job_hash("train", spec.identity()), spec=spec, parents=[],
            tree_parent=None, tags={"replicate": r, "density": 1.0}, name=run_name("train", {"replicate": r}),
            iterations=hyper.iterations, trial=trial,
        ))
        if inst:
            for step in inst.rewind:
                k = hyper.iterations_of(step)
                add_instability(plan, train, r, k, level=None, mask=None, control=None, tree_parent=train.hash)
        if sweep.imp:
            add_imp(plan, train, r)
    return plan
