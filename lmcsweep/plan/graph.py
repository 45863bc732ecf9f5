"""The job graph of a sweep: what must be computed, each job named by the hash of its inputs.

Kinds of job (all keyed by `identity.job_hash` of exactly the inputs that decide their result,
their typed specs in `specs`):

- ``train``: the dense network of one replicate, from its init seed to T, saving checkpoints at
  every rewind point of the sweep (one run serves all k);
- ``branch``: a copy trained from checkpoint k (optionally under a mask, or a control) to T with
  its own SGD-noise seeds (with ``instability.schedule: restart``, to k + T with the schedule
  started again at k: `BranchSpec.end`, `BranchSpec.lr_offset`);
- ``interpolate``: a pair of branches -> error along the path -> instability;
- ``prune``: the mask of IMP level L, from level L-1's trained subnetwork (a ``level`` run in MLflow).

IMP level 0 trains the dense network under the full mask, which changes no bit of it: its branches
and interpolations name the dense ones at the same k as `same_as`, and the runner reuses those
when they are done instead of training them again (their hashes stay those of level 0, so the
IMP chain's hashes do not depend on whether the sweep has an instability section).

The plan is static: hashes never depend on results, so a whole sweep is known before anything runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..config import PRESETS, Hyper, SweepConfig, resolve
from ..config.bounds import imp_rewinds
from ..identity import job_hash, sweep_fingerprint
from ..seeds import derive_seed
from .specs import BranchSpec, InterpolateSpec, Job, job_from_dict


@dataclass
class Plan:
    sweep: SweepConfig
    hyper: Hyper
    jobs: list[Job] = field(default_factory=list)
    trial: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    study: str | None = None  # the Optuna study of the trial (its runs are tagged with it)

    def by_hash(self) -> dict[str, Job]:
        return {j.hash: j for j in self.jobs}

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data (`plan_from_dict` reads it back): the sweep (variant) it was
        made from, its trial and study, and every job's spec."""
        return {"sweep": sweep_fingerprint(self.sweep), "trial": self.trial, "study": self.study,
                "overrides": self.overrides, "jobs": [j.to_dict() for j in self.jobs]}


def plan_from_dict(data: dict[str, Any]) -> Plan:
    """The `Plan` that `Plan.to_dict` wrote: its jobs as stored (not planned again)."""
    sweep = SweepConfig.model_validate(data["sweep"])
    return Plan(sweep=sweep, hyper=resolve(sweep), jobs=[job_from_dict(j) for j in data["jobs"]],
                trial=data["trial"], overrides=data["overrides"], study=data["study"])


def same_study(run_study: str | None, study: str | None) -> bool:
    """Whether a run tagged with Optuna study `run_study` belongs with `study`: trial n of an
    earlier study of an edited search is another trial. Unknown on either side (no search, or a
    run made before runs carried their study) counts as the same."""
    return run_study is None or study is None or run_study == study


def data_identity(sweep: SweepConfig, hyper: Hyper) -> dict[str, Any]:
    d = sweep.data
    return {
        "dataset": hyper.dataset,
        "subset_train": d.subset_train,
        "subset_test": d.subset_test,
        "synthetic": d.synthetic.model_dump(mode="json") if (d.synthetic and hyper.dataset == "synthetic") else None,
        "augmentation": hyper.augmentation,
    }


def replicate_seed(sweep: SweepConfig, replicate: int) -> int:
    return sweep.seed + replicate


def copy_seeds(sweep: SweepConfig, replicate: int, level: int, copy: int, noise: list[str]) -> dict[str, int]:
    """The SGD-noise seeds of copy `copy`: fresh for each varied kind of noise, the parent's otherwise."""
    base = replicate_seed(sweep, replicate)
    return {
        kind: (derive_seed(kind, "copy", base, level, copy) % 2**31 if kind in noise else base)
        for kind in ("data_order", "augmentation")
    }


def init_seed(sweep: SweepConfig, replicate: int, copy: int) -> int:
    """The init seed of copy `copy` (> 0) of a replicate under `instability.init: different`."""
    return derive_seed("init", "copy", replicate_seed(sweep, replicate), copy) % 2**31


def rewind_iterations(sweep: SweepConfig, hyper: Hyper) -> list[int]:
    """Every rewind point of the sweep, in iterations (sorted, unique)."""
    steps = []
    if sweep.instability:
        steps += sweep.instability.points
    if sweep.imp:
        steps += imp_rewinds(sweep)
    return sorted({hyper.iterations_of(s) for s in steps})


def add_instability(plan: Plan, train: Job, replicate: int, k: int, level: int | None, mask: str | None,
                    control: str | None, tree_parent: str, copies: int | None = None,
                    control_seed: int | None = None, full_mask: bool = False) -> list[Job]:
    """Branches from checkpoint k of `train` (under `mask`/`control`) and, with instability analysis
    on, the interpolation of every pair of them (`instability.pairs: all`) or of copies (0,1),
    (2,3), ... (`disjoint`). The copies follow `instability.optimizer` and `.schedule` whether
    they are dense or IMP's (a level-0 branch stays the dense one's twin). Returns the branch
    jobs (copy 0 first). With `full_mask` (IMP level 0) each job is the same as the dense one at k
    (`Job.same_as`)."""
    sweep, hyper = plan.sweep, plan.hyper
    inst = sweep.instability
    noise = inst.noise if inst else ["data_order", "augmentation"]
    n = copies if copies is not None else (inst.copies if inst else 1)
    optimizer_mode = inst.optimizer if inst else "continue"
    # At k = 0 a restarted schedule is the schedule itself: the same job, so the same hash.
    schedule = "restart" if inst and inst.schedule == "restart" and k > 0 else None
    lvl = level or 0
    # instability.init: different (dense copies only: validation refuses it with IMP): copy c > 0 starts
    # from its own initialisation; copy 0 keeps the replicate's, so it is the shared-init copy 0 at k = 0
    different = bool(inst and inst.init == "different" and level is None and control is None)
    base_tags = {"replicate": replicate, "rewind": k, "level": level, "control": control,
                 "init": "different" if different else None}
    branches = []
    for c in range(n):
        spec = BranchSpec(train=train.hash, rewind=k, mask=mask, control=control,
                          seeds=copy_seeds(sweep, replicate, lvl, c, noise), optimizer=optimizer_mode,
                          schedule=schedule, control_seed=control_seed, parent_seeds=train.spec.seeds,
                          init=init_seed(sweep, replicate, c) if different and c > 0 else None)
        spec.end = hyper.iterations + spec.lr_offset  # T, or k + T with the schedule restarted at k
        dense = BranchSpec(**{**spec.__dict__, "mask": None, "control": None}) if full_mask else None
        branches.append(plan.add(Job(
            kind="branch", hash=_branch_hash(spec), spec=spec, parents=[train.hash] + ([mask] if mask else []),
            tree_parent=tree_parent, tags={**base_tags, "copy": c},
            name=run_name("branch", {**base_tags, "copy": c}), iterations=spec.end - k,
            trial=plan.trial, same_as=_branch_hash(dense) if dense else None,
        )))
    if inst and (level is None or (sweep.imp and sweep.imp.instability)):
        pairs = (itertools.combinations(branches, 2) if inst.pairs == "all"
                 else zip(branches[0::2], branches[1::2]))  # disjoint: (0,1), (2,3), ...
        for a, b in pairs:
            spec = InterpolateSpec(pair=[a.hash, b.hash], alphas=inst.alphas, splits=sorted(inst.splits),
                                   bn=inst.bn, bn_batches=inst.bn_batches, train_examples=inst.train_examples,
                                   subset_test=sweep.data.subset_test, ends=[a.spec.end, b.spec.end],
                                   parent_seeds=train.spec.seeds, align=inst.align, align_batches=inst.align_batches)
            ca, cb = a.tags["copy"], b.tags["copy"]
            tags = {**base_tags, "pair": f"{ca}-{cb}", "align": None if inst.align == "none" else inst.align}
            twin = (_interpolate_hash(InterpolateSpec(**{**spec.__dict__, "pair": [a.same_as, b.same_as]}))
                    if a.same_as and b.same_as else None)
            plan.add(Job(
                kind="interpolate", hash=_interpolate_hash(spec), spec=spec,
                parents=[a.hash, b.hash], tree_parent=a.hash, tags=tags,
                name=run_name("interpolate", tags), trial=plan.trial, same_as=twin,
            ))
    return branches


def run_name(kind: str, tags: dict[str, Any]) -> str:
    """What a job's MLflow run is called, so that a row of the runs table says what it is: the kind,
    replicate, rewind point, IMP level and density, control, copy or pair. E.g. ``train rep 0``,
    ``branch rep 0 k=300 copy 1``, ``interpolate rep 1 k=0 level 3 (51.2%) random_prune copies 0-1``.
    Names are labels only: they never enter a job's hash."""
    level = None
    if tags.get("level") is not None:
        level = f"level {tags['level']}" + (f" ({100 * tags['density']:.3g}%)" if tags.get("density") else "")
    parts = [level] if kind == "prune" else [kind]  # a prune job's run is its level's
    parts.append(f"rep {tags['replicate']}")
    if tags.get("rewind") is not None:
        parts.append(f"k={tags['rewind']}")
    if level and kind != "prune":
        parts.append(level)
    if tags.get("control"):
        parts.append(tags["control"])
    if tags.get("copy") is not None:
        parts.append(f"copy {tags['copy']}")
    if tags.get("pair"):
        parts.append(f"copies {tags['pair']}")
    if tags.get("init"):
        parts.append(f"init {tags['init']}")
    if tags.get("align"):
        parts.append(f"aligned by {tags['align']}")
    return " ".join(parts)


def _branch_hash(spec: BranchSpec) -> str:
    return job_hash("branch", spec.identity(), [spec.train] + ([spec.mask] if spec.mask else []))


def _interpolate_hash(spec: InterpolateSpec) -> str:
    return job_hash("interpolate", spec.identity(), list(spec.pair))


def exempt_layers(sweep: SweepConfig) -> list[str]:
    if sweep.imp and sweep.imp.exempt is not None:
        return list(sweep.imp.exempt)
    return list(PRESETS[sweep.preset].imp_exempt)


def summary(plans: list[Plan], done: set[str]) -> dict[str, Any]:
    """Counts of jobs by kind, done and remaining, and training iterations remaining (a job whose
    `same_as` is done or planned before it costs none: `twins_remaining` counts those)."""
    out: dict[str, Any] = {"kinds": {}, "jobs": 0, "done": 0, "remaining": 0, "iterations_remaining": 0,
                           "twins_remaining": 0}
    seen: set[str] = set()
    for plan in plans:
        for job in plan.jobs:
            if job.hash in seen:
                continue
            seen.add(job.hash)
            twin_done = job.same_as is not None and (job.same_as in done or job.same_as in seen)
            row = out["kinds"].setdefault(job.kind, {"jobs": 0, "done": 0, "remaining": 0})
            row["jobs"] += 1
            out["jobs"] += 1
            if job.hash in done:
                row["done"] += 1
                out["done"] += 1
            else:
                row["remaining"] += 1
                out["remaining"] += 1
                out["iterations_remaining"] += 0 if twin_done else job.iterations
                out["twins_remaining"] += twin_done
    return out
