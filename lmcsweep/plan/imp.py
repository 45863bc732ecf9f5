"""IMP with rewinding (Algorithm 2 of the paper) as jobs of the plan.

For every replicate, every imp.rewind point k and every level L = 0 .. `levels(plan)`:

- a ``prune`` job (an MLflow ``level`` run nested under the replicate) writes the level's mask:
  level 0 is the full mask of the prunable layers (conv and linear weights, minus the exempt
  ones); level L >= 1 prunes globally the `fraction` smallest-magnitude surviving weights of level
  L-1's trained subnetwork (its copy-0 branch at its end: T, or k + T with
  ``instability.schedule: restart``), or, with ``style: one_shot``, prunes that network straight to
  the target density (one level);
- the level's branches: ``m ⊙ W_k`` trained from k to T (or k + T) with fresh SGD noise (the copies
  share the mask; with ``imp.instability`` they are ``instability.copies`` and their pairs, every
  pair or disjoint ones as ``instability.pairs`` says, are interpolated);
- per control of ``imp.controls``, the same branches under ``random_prune`` (a random mask with
  IMP's per-layer counts) or ``random_reinit`` (IMP's mask on weights freshly drawn from a separate
  seed). Controls are skipped at level 0: at density 1 a random mask is the full mask, and the
  dense network reinitialised is just another replicate.

Level 0's branches and interpolations are the dense ones at k bit for bit (the full mask changes
nothing): they carry those as `same_as` and are reused from them when the sweep (or another in the
store) has them, so a sweep with both an instability and an imp section trains them once.

Level L's mask depends on level L-1's trained weights only through job hashes, so the chain is
static and known before anything runs; a finished level is found by its hash and never retrained.

Matching is read back from the runs: `records.matching`.
"""

from __future__ import annotations

import math

from ..config import PRESETS
from ..config.bounds import imp_rewinds
from ..identity import job_hash
from ..seeds import derive_seed
from .graph import Plan, add_instability, exempt_layers, replicate_seed, run_name
from .specs import Job, PruneSpec

CONTROLS = ("random_prune", "random_reinit")


def imp_style(plan: Plan) -> str:
    return plan.sweep.imp.style or PRESETS[plan.sweep.preset].imp_style


def target_density(plan: Plan) -> float:
    """One-shot pruning's target: imp.target_density, else the preset's IMP density (Table 1)."""
    imp = plan.sweep.imp
    return imp.target_density if imp.target_density is not None else PRESETS[plan.sweep.preset].imp_density


def levels(plan: Plan) -> int:
    """imp.levels, else the preset's: one for one_shot; iterative, as many levels of `fraction` as
    reach the preset's IMP density (Table 1: LeNet 15, ResNet-20 8, VGG-16 19 at 20%)."""
    imp = plan.sweep.imp
    if imp.levels is not None:
        return imp.levels
    if imp_style(plan) == "one_shot":
        return 1
    return max(1, math.ceil(math.log(PRESETS[plan.sweep.preset].imp_density) / math.log(1 - imp.fraction) - 1e-9))


def nominal_density(plan: Plan, level: int) -> float:
    """The density level `level` aims at: (1 - fraction)^level, or the one-shot target at level 1."""
    if level == 0:
        return 1.0
    if imp_style(plan) == "one_shot":
        return target_density(plan)
    return (1.0 - plan.sweep.imp.fraction) ** level


def control_seed(plan: Plan, control: str, replicate: int, level: int, k: int) -> int:
    """The seed of a control's random mask (random_prune) or fresh weights (random_reinit)."""
    return derive_seed(control, replicate_seed(plan.sweep, replicate), level, k) % 2**31


def add_imp(plan: Plan, train: Job, replicate: int, depth: dict[int, int] | None = None) -> list[Job]:
    """Adds the IMP levels (prune jobs, branches, controls, interpolations) of one replicate: at
    every IMP rewind point, every level; with `depth` (an onset search's probes: k -> the deepest
    level it analyses at k) only the rewind points it names, down to their level.

    Returns the prune jobs, in plan order."""
    sweep, hyper = plan.sweep, plan.hyper
    imp, inst = sweep.imp, sweep.instability
    style = imp_style(plan)
    copies = inst.copies if (imp.instability and inst is not None) else 1
    exempt = exempt_layers(sweep)
    prunes: list[Job] = []
    for k in sorted({hyper.iterations_of(step) for step in imp_rewinds(sweep)}):
        if depth is not None and k not in depth:
            continue
        previous: Job | None = None
        source: Job | None = None
        for level in range(levels(plan) + 1 if depth is None else depth[k] + 1):
            density = nominal_density(plan, level)
            spec = PruneSpec(
                train=train.hash, rewind=k, level=level, source=source.hash if source else None,
                previous=previous.hash if previous else None, style=style,
                fraction=imp.fraction if style == "iterative" else None,
                target_density=target_density(plan) if style == "one_shot" else None,
                exempt=exempt, source_end=source.spec.end if source else None, parent_seeds=dict(train.spec.seeds),
            )
            parents = [source.hash, previous.hash] if source and previous else [train.hash]
            job = plan.add(Job(
                kind="prune", hash=job_hash("prune", spec.identity(), parents), spec=spec, parents=parents,
                tree_parent=train.hash, tags={"replicate": replicate, "rewind": k, "level": level,
                                              "density": round(density, 6), "control": None},
                name="", iterations=0, trial=plan.trial,
            ))
            job.name = run_name("prune", job.tags)
            prunes.append(job)
            first = len(plan.jobs)
            branches = add_instability(plan, train, replicate, k, level=level, mask=job.hash, control=None,
                                       tree_parent=job.hash, copies=copies, full_mask=level == 0)
            for control in (imp.controls if level > 0 else []):
                add_instability(plan, train, replicate, k, level=level, mask=job.hash, control=control,
                                tree_parent=job.hash, copies=copies,
                                control_seed=control_seed(plan, control, replicate, level, k))
            for added in plan.jobs[first:]:   # branches and interpolations carry the level's density
                added.tags["density"] = round(density, 6)
                added.name = run_name(added.kind, added.tags)
            previous, source = job, branches[0]
    return prunes
