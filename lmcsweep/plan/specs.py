"""Job specs: a typed, serialisable description of one job, enough for any process with access to
the store to run it and record it.

One dataclass per kind of job. Each holds the inputs that decide the job's result (`identity()`,
what its hash is made of, unchanged from the untyped fields this replaced) and, beside them, facts
it needs from its parents that do not change its result given its parents' hashes (the iteration a
branch ends at, the dense network's seeds): with those a job never needs its parents' specs.

A `Job` is one node of the graph: its kind, hash, spec, parents, the job whose MLflow run its run
nests under, its tags and run name. `Job.to_dict` / `job_from_dict` round-trip it through JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


class JobSpec:
    """What every spec has: its kind, its identity (what its hash is made of), what its run records."""

    kind: ClassVar[str]

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def recorded(self) -> dict[str, Any]:
        """What its run records as params (`job.*`, `seed.*`): its identity, unless said otherwise."""
        return self.identity()


@dataclass
class TrainSpec(JobSpec):
    """The dense network of one replicate: init -> T, a checkpoint at every rewind point."""

    kind: ClassVar[str] = "train"
    hyper: dict[str, Any]            # `Hyper.identity()`
    data: dict[str, Any]             # `graph.data_identity`
    seeds: dict[str, int]            # init, data_order, augmentation
    save_at: list[int] = field(default_factory=list)  # not hashed: any later k is replayed from a checkpoint

    def identity(self) -> dict[str, Any]:
        return {"hyper": self.hyper, "data": self.data, "seeds": self.seeds}

    def recorded(self) -> dict[str, Any]:
        """Its identity and the rewind points it checkpoints."""
        return {**self.identity(), "save_at": self.save_at}


@dataclass
class BranchSpec(JobSpec):
    """A copy trained from checkpoint k of `train` (under `mask`, or a control) to `end`."""

    kind: ClassVar[str] = "branch"
    train: str                       # the dense job it starts from
    rewind: int                      # k, in iterations
    mask: str | None                 # the prune job whose mask it trains under
    control: str | None              # random_prune | random_reinit
    seeds: dict[str, int]            # its own data_order, augmentation
    optimizer: str                   # continue | restart the optimizer state at k
    schedule: str | None = None      # "restart": the schedule starts again at k (hashed only then)
    control_seed: int | None = None  # a control's random mask or weights (hashed only for controls)
    init: int | None = None          # its own init seed (`instability.init: different`; hashed only then)
    end: int = 0                     # not hashed: the iteration it trains to (T, or k + T)
    parent_seeds: dict[str, int] = field(default_factory=dict)  # not hashed: the dense network's

    def identity(self) -> dict[str, Any]:
        out = {"train": self.train, "rewind": self.rewind, "mask": self.mask, "control": self.control,
               "seeds": self.seeds, "optimizer": self.optimizer}
        if self.schedule is not None:
            out["schedule"] = self.schedule
        if self.control_seed is not None:
            out["control_seed"] = self.control_seed
        if self.init is not None:
            out["init"] = self.init
        return out

    @property
    def lr_offset(self) -> int:
        """What it subtracts from the iteration to read its learning rate: k when its schedule
        restarts at k (`instability.schedule: restart`), else 0. Iterations stay global, so data
        order and augmentation keep their keys."""
        return self.rewind if self.schedule == "restart" else 0

    @property
    def init_seed(self) -> int:
        """The seed of its initial weights: its own (`init`), fresh ones for random_reinit, else the
        dense network's."""
        if self.init is not None:
            return self.init
        return self.control_seed if self.control == "random_reinit" else self.parent_seeds["init"]


@dataclass
class InterpolateSpec(JobSpec):
    """A pair of branches -> error along the straight path between them -> instability."""

    kind: ClassVar[str] = "interpolate"
    pair: list[str]
    alphas: int
    splits: list[str]
    bn: str
    bn_batches: int
    train_examples: int | None
    subset_test: int | None
    ends: list[int] = field(default_factory=list)      # not hashed: the pair's final iterations
    parent_seeds: dict[str, int] = field(default_factory=dict)  # not hashed: BatchNorm (and alignment) data order
    align: str = "none"              # none | weights | activations (hashed only when not none)
    align_batches: int = 4           # training batches of activation matching (hashed only then)

    def identity(self) -> dict[str, Any]:
        out = {"pair": self.pair, "alphas": self.alphas, "splits": self.splits, "bn": self.bn,
               "bn_batches": self.bn_batches, "train_examples": self.train_examples,
               "subset_test": self.subset_test}
        if self.align != "none":
            out["align"] = self.align
        if self.align == "activations":
            out["align_batches"] = self.align_batches
        return out


@dataclass
class PruneSpec(JobSpec):
    """The mask of IMP level `level`: the full mask (level 0), or level L-1's trained subnetwork
    (`source`, a branch ending at `source_end`) pruned under its mask (`previous`)."""

    kind: ClassVar[str] = "prune"
    train: str
    rewind: int
    level: int
    source: str | None
    previous: str | None
    style: str                       # iterative | one_shot
    fraction: float | None
    target_density: float | None
    exempt: list[str]
    source_end: int | None = None    # not hashed
    parent_seeds: dict[str, int] = field(default_factory=dict)  # not hashed: the dense network's (its ticket)

    def identity(self) -> dict[str, Any]:
        return {"train": self.train, "rewind": self.rewind, "level": self.level, "source": self.source,
                "previous": self.previous, "style": self.style, "fraction": self.fraction,
                "target_density": self.target_density, "exempt": self.exempt}


Spec = TrainSpec | BranchSpec | InterpolateSpec | PruneSpec
SPECS: dict[str, type] = {cls.kind: cls for cls in (TrainSpec, BranchSpec, InterpolateSpec, PruneSpec)}


@dataclass
class Job:
    kind: str                       # train | branch | interpolate | prune
    hash: str
    spec: Spec                      # the inputs that determine the result (`spec.identity()` is hashed)
    parents: list[str]              # hashes of the jobs it starts from
    tree_parent: str | None         # the job whose MLflow run this job's run nests under (None: trial/sweep)
    tags: dict[str, Any]            # lmcsweep.* tags (replicate, rewind, level, density, control, copy)
    name: str                       # MLflow run name
    iterations: int = 0             # training iterations it costs
    trial: int | None = None
    same_as: str | None = None      # a job that computes the same result bit for bit under another
    #                                 identity (IMP level 0 = the dense branches): reused once done

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["spec"] = asdict(self.spec)
        return out


def job_from_dict(data: dict[str, Any]) -> Job:
    """The `Job` that `Job.to_dict` wrote (after a trip through JSON)."""
    spec = SPECS[data["kind"]](**data["spec"])
    return Job(**{**data, "spec": spec})
