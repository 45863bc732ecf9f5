"""Resolution: preset + overrides -> concrete settings (`Hyper`), all durations in iterations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import identity as job_identity
from ..steps import Step
from .presets import PRESETS
from .schema import TRAIN_SIZES, SweepConfig, SyntheticConfig


@dataclass(frozen=True)
class Hyper:
    """Concrete training settings of one sweep (or one Optuna variant), all durations in iterations."""

    preset: str
    model: str
    model_options: dict[str, Any]
    dataset: str
    augmentation: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    iterations: int
    schedule: str
    milestones: tuple[int, ...]
    gamma: float
    final_lr: float
    warmup: int
    iterations_per_epoch: int
    eval_every: int
    checkpoint_every: int
    precision: str = "fp32"
    compile: bool = False
    cpu_threads: int = 1
    deterministic: bool = True

    def identity(self) -> dict[str, Any]:
        """The fields that determine a training result (cadences and compile excluded; `deterministic`
        only when off, when GPU bits may differ run to run), with the
        revision of the random draws (`identity.DRAWS`) where training makes draws beyond the data order."""
        out = dict(self.__dict__)
        for key in ("eval_every", "checkpoint_every", "compile"):
            out.pop(key)
        if self.deterministic:
            out.pop("deterministic")  # the default, left out so earlier jobs keep their hashes
        if self.augmentation != "none" or self.model in job_identity.DROPOUT_MODELS:
            out["draws"] = job_identity.DRAWS  # read when called, so that raising it takes effect
        return out

    def iterations_of(self, step: Step) -> int:
        """`step` in iterations, an epoch being `iterations_per_epoch` of this training."""
        return step.to_iterations(self.iterations_per_epoch)


def dataset_of(sweep: SweepConfig) -> str:
    return sweep.data.dataset or PRESETS[sweep.preset].dataset


def train_size(sweep: SweepConfig) -> int:
    """Number of training examples the sweep will use (for epochs -> iterations)."""
    name = dataset_of(sweep)
    if name == "synthetic":
        size = (sweep.data.synthetic or SyntheticConfig()).train
    else:
        size = TRAIN_SIZES[name]
    if sweep.data.subset_train:
        size = min(size, sweep.data.subset_train)
    return size


def resolve(sweep: SweepConfig) -> Hyper:
    """Merge the preset with the sweep's `train` overrides into concrete settings."""
    p, t = PRESETS[sweep.preset], sweep.train
    batch = t.batch_size or p.batch_size
    ipe = max(1, train_size(sweep) // batch)

    def its(step: Step | None, default: Step) -> int:
        return (step if step is not None else default).to_iterations(ipe)

    total = its(t.iterations, p.iterations)
    milestones = tuple(s.to_iterations(ipe) for s in (t.milestones if t.milestones is not None else p.milestones))
    options = {k: v for k, v in t.model.model_dump().items() if v is not None}
    default_cadence = Step(max(1, total // 10))
    return Hyper(
        preset=p.name, model=p.model, model_options=options, dataset=dataset_of(sweep),
        augmentation=sweep.data.augmentation or (p.augmentation if dataset_of(sweep) == p.dataset
                                                 else _default_augmentation(dataset_of(sweep))),
        optimizer=t.optimizer or p.optimizer, lr=t.lr or p.lr,
        momentum=t.momentum if t.momentum is not None else p.momentum,
        weight_decay=t.weight_decay if t.weight_decay is not None else p.weight_decay,
        batch_size=batch, iterations=total, schedule=t.schedule or p.schedule, milestones=milestones,
        gamma=t.gamma or p.gamma, final_lr=t.final_lr if t.final_lr is not None else p.final_lr,
        warmup=its(t.warmup, p.warmup), iterations_per_epoch=ipe,
        eval_every=its(t.eval_every, default_cadence), checkpoint_every=its(t.checkpoint_every, default_cadence),
        precision=t.precision, compile=t.compile, cpu_threads=t.cpu_threads,
        deterministic=t.deterministic,
    )


def _default_augmentation(dataset: str) -> str:
    return {"cifar10": "crop_flip", "imagenet": "rrc_flip"}.get(dataset, "none")
