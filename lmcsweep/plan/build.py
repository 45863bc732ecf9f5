"""A sweep expanded into its job graph (`build_plan`): the dense networks, their instability
analyses (`graph.add_instability`) and IMP chains (`imp.add_imp`)."""

from __future__ import annotations

from typing import Any

from ..config import SweepConfig, resolve
from ..identity import job_hash
from .graph import Plan, add_instability, data_identity, replicate_seed, rewind_iterations, run_name
from .imp import add_imp
from .specs import Job, TrainSpec


# An onset search's probes: (replicate, IMP level or None for the dense network) -> the rewind points
# (iterations) whose analyses the plan holds.
Probes = dict[tuple[int, int | None], set[int]]


def build_plan(sweep: SweepConfig, trial: int | None = None, overrides: dict[str, Any] | None = None,
               study: str | None = None, probes: Probes | None = None) -> Plan:
    """Expand one sweep (one Optuna variant when `trial` is set, of `study`) into its jobs, parents first.

    A sweep with an onset search (`instability.rewind: {search: onset}`) analyses only the rewind
    points of `probes` (`search.onset` decides them as results come in); without `probes`, every
    point of its grid (what the search could ever ask: the hashes it looks up in the store)."""
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
        searched = probes is not None and inst is not None and inst.onset is not None
        if inst:
            for step in inst.points:
                k = hyper.iterations_of(step)
                if not searched or k in probes.get((r, None), ()):
                    add_instability(plan, train, r, k, level=None, mask=None, control=None, tree_parent=train.hash)
        if sweep.imp:
            add_imp(plan, train, r, imp_depth(probes, r) if searched and sweep.imp.instability else None)
    return plan


def imp_depth(probes: Probes, replicate: int) -> dict[int, int]:
    """k -> the deepest IMP level the probes of `replicate` analyse at k (the chain at k is built to it)."""
    depth: dict[int, int] = {}
    for (r, level), points in probes.items():
        if r == replicate and level is not None:
            for k in points:
                depth[k] = max(depth.get(k, 0), level)
    return depth
