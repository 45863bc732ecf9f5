"""A ticket (`export`) made from the store: an IMP level's mask (or a control's) and the dense
network's weights at the level's rewind point k (or a random_reinit control's fresh ones)."""

from __future__ import annotations

from typing import Any

from .. import export, prune
from ..plan.specs import BranchSpec, PruneSpec
from .context import Context
from .training import ensure_checkpoint


def ticket(ctx: Context, prune_hash: str, spec: PruneSpec, branch: BranchSpec | None = None,
           branch_hash: str | None = None) -> dict[str, Any]:
    """The ticket of level `spec` (job `prune_hash`), or of a control of it (`branch`: its copy 0)."""
    masks = ctx.store.load_masks(prune_hash)
    control = branch.control if branch is not None else None
    # in name order: a plan read back from plan.json (`verify --repair`) has its keys sorted, and a
    # ticket made again must be the same bytes
    seeds = dict(sorted((spec.parent_seeds or (branch.parent_seeds if branch is not None else {})).items()))
    if control == "random_prune":
        masks = prune.random_prune(masks, branch.control_seed)
    if control == "random_reinit":
        weights = ctx.model(branch.control_seed).state_dict()
    elif seeds:
        weights = ensure_checkpoint(ctx, spec.train, seeds, spec.rewind)["model"]
    else:
        weights = ctx.store.load_checkpoint(spec.train, spec.rewind)["model"]
    info = {"level": spec.level, "density": prune.density(masks), "rewind": spec.rewind, "control": control,
            "job": prune_hash, "branch_job": branch_hash, "train_job": spec.train, "sweep": ctx.sweep.name,
            "preset": ctx.sweep.preset, "dataset": ctx.hyper.dataset, "seeds": seeds,
            "control_seed": branch.control_seed if control else None}
    return export.make_ticket(ctx.model_definition(), weights, masks, info)
