"""The schema of a sweep file: strict, typed pydantic models; an unknown or mistyped field is an error.

Durations are `StepField`s ("2000it", "2ep"); fields left out of `train` come from the sweep's preset
(`presets`), and `resolve` turns the two into concrete settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PlainSerializer, StrictInt, Tag,
                      model_validator)

from ..steps import Step, parse_step


def _step(value: Any) -> Step:
    return parse_step(value)


StepField = Annotated[Step, BeforeValidator(_step), PlainSerializer(str, return_type=str)]
# Bounds of what plan and run can do: counts a sweep could ask for, far beyond any paper's, that
# still plan in about a second; names safe as file names (the store's lock) and MLflow run names.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_NAME = 100
MAX_LIST = 100  # rewind points, hidden layers, controls, exempt layers
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no control characters (a newline in a path or an experiment name)
DATASETS = ("mnist", "fashion_mnist", "cifar10", "imagenet", "synthetic")
TRAIN_SIZES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "imagenet": 1281167}


Split = Literal["test", "train"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(Strict):
    shape: tuple[Annotated[StrictInt, Field(ge=1, le=1024)], Annotated[StrictInt, Field(ge=1, le=1024)],
                 Annotated[StrictInt, Field(ge=1, le=1024)]] = (3, 32, 32)
    classes: StrictInt = Field(10, ge=2, le=100000)
    train: StrictInt = Field(512, ge=1, le=10**6)
    test: StrictInt = Field(256, ge=1, le=10**6)
    seed: StrictInt = Field(0, ge=0, le=2**63 - 1)


class DataConfig(Strict):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "imagenet", "synthetic"] | None = Field(
        None, description="data set; defaults to the preset's")
    loader: Literal["tensor", "ffcv"] = Field("tensor", description="in-memory tensors or FFCV .beton files")
    root: str | None = Field(None, max_length=4096, pattern=PRINTABLE,
                             description="folder holding the data set (else $LMCSWEEP_DATA, then defaults)")
    download: bool = Field(False, description="allow torchvision to download the data set into root")
    subset_train: StrictInt | None = Field(None, ge=1, le=10**8,
                                           description="use only the first N training examples")
    subset_test: StrictInt | None = Field(None, ge=1, le=10**8, description="use only the first N test examples")
    augmentation: Literal["none", "crop_flip", "rrc_flip"] | None = Field(None, description="override")
    synthetic: SyntheticConfig | None = None


class ModelOptions(Strict):
    width: float | None = Field(None, gt=0, le=64, allow_inf_nan=False,
                                description="resnet20: first-stage channels; vgg16: multiplier")
    depth: StrictInt | None = Field(None, ge=2, le=1000, description="resnet20: 6n+2 layers")
    hidden: list[Annotated[StrictInt, Field(ge=1, le=100000)]] | None = Field(
        None, max_length=MAX_LIST, description="lenet: hidden layer sizes")


class TrainConfig(Strict):
    """Overrides of the preset; anything left out comes from the preset."""

    iterations: StepField | None = None
    batch_size: StrictInt | None = Field(None, ge=1, le=10**6)
    optimizer: Literal["sgd", "adam"] | None = None
    lr: float | None = Field(None, gt=0, allow_inf_nan=False)
    momentum: float | None = Field(None, ge=0, lt=1, allow_inf_nan=False)
    weight_decay: float | None = Field(None, ge=0, allow_inf_nan=False)
    schedule: Literal["constant", "step", "linear"] | None = None
    milestones: list[StepField] | None = Field(None, max_length=MAX_LIST)
    gamma: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    final_lr: float | None = Field(None, ge=0, allow_inf_nan=False)
    warmup: StepField | None = None
    model: ModelOptions = ModelOptions()
    eval_every: StepField | None = Field(None, description="test accuracy cadence (default: 10 times a run)")
    checkpoint_every: StepField | None = Field(None, description="resume checkpoint cadence (default: 10 times a run)")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: StrictInt = Field(1, ge=1, le=1024, description="kernel threads per network trained on CPU; part "
                                   "of a job's identity (MKL and oneDNN sum weight gradients differently for other "
                                   "counts)")
    deterministic: bool = Field(True, description="on a GPU: deterministic kernels only (no cuDNN autotuning), so "
                                "a job's numbers repeat run to run whatever trains beside it; false is faster but "
                                "its bits may differ run to run (then part of the job's identity). No effect on CPU")


Noise = Literal["data_order", "augmentation"]
class OnsetSearch(Strict):
    """`instability.rewind` as a search for the earliest stable k (`search.onset`): bisection over
    `grid`, per replicate (and per IMP level with imp.instability), instead of every point."""

    search: Literal["onset"] = Field(description="the kind of search over rewind points: onset")
    grid: list[StepField] = Field(min_length=2, max_length=MAX_LIST, description="candidate rewind points k")
    threshold: float = Field(0.02, gt=0, le=1, allow_inf_nan=False,
                             description="k is stable when its pairs' mean instability is below this")
    split: Split = Field("test", description="the split whose instability decides stability")


class InstabilityConfig(Strict):
    rewind: Annotated[Annotated[list[StepField], Tag("list[steps]")] | Annotated[OnsetSearch, Tag("OnsetSearch")],
                      Discriminator(lambda v: "OnsetSearch" if isinstance(v, (dict, OnsetSearch)) else "list[steps]")] = Field(
        description="rewind points k, or an onset search over a grid of them ({search: onset, grid: [...]})")
    copies: StrictInt = Field(2, ge=2, le=100, description="copies trained from each k")
    pairs: Literal["all", "disjoint"] = Field(
        "all", description="compare every pair of copies, or (0,1), (2,3), ... only (pairs share no copy)")
    alphas: StrictInt = Field(30, ge=2, le=1000, description="evenly spaced points in [0, 1], endpoints included")
    splits: list[Split] = Field(["test", "train"], min_length=1, max_length=2)
    noise: list[Noise] = Field(["data_order", "augmentation"], min_length=1, max_length=2)
    optimizer: Literal["continue", "restart"] = Field(
        "continue", description="copies continue the optimizer state at k, or restart it")
    schedule: Literal["continue", "restart"] = Field(
        "continue", description="copies train T - k more iterations on the schedule where it was at k, or T "
        "more with the learning-rate schedule restarted from iteration 0 (the paper's Figure 4 control)")
    bn: Literal["interpolate", "reset", "repair"] = Field(
        "interpolate", description="BatchNorm statistics along the path: interpolated, re-estimated, or every "
        "hidden unit's mean and std repaired to the blend of the end networks' (REPAIR)")
    bn_batches: StrictInt = Field(20, ge=1, le=10000,
                                  description="training batches used to re-estimate BatchNorm (bn: reset) or to "
                                  "measure activation statistics (bn: repair)")
    train_examples: StrictInt | None = Field(
        None, ge=1, le=10**8, description="evaluate the train split on its first N examples (default: all)")
    align: Literal["none", "weights", "activations"] = Field(
        "none", description="permute copy B's hidden units to match copy A before interpolating (weight "
        "matching, or activation matching on training batches); both barriers are recorded")
    align_batches: StrictInt = Field(4, ge=1, le=10000, description="training batches whose activations are "
                                     "matched (align: activations) and on which the aligned network is checked")
    init: Literal["shared", "different"] = Field(
        "shared", description="copies share the network at k, or each starts from its own initialisation "
        "(trained from scratch: rewind must be [0it]; pair it with align)")

    @property
    def onset(self) -> OnsetSearch | None:
        """The onset search, when `rewind` is one."""
        return self.rewind if isinstance(self.rewind, OnsetSearch) else None

    @property
    def points(self) -> list[Step]:
        """Every rewind point the sweep may analyse: the list, or the onset search's grid."""
        return list(self.rewind.grid) if isinstance(self.rewind, OnsetSearch) else list(self.rewind)


class ImpConfig(Strict):
    levels: StrictInt | None = Field(None, ge=1, le=100, description="pruning rounds, density (1 - fraction)^level; "
                                     "default: down to the preset's IMP density (one level for one_shot)")
    fraction: float = Field(0.2, gt=0, lt=1, allow_inf_nan=False,
                            description="fraction of remaining weights pruned per level")
    rewind: list[StepField] = Field([Step(0)], min_length=1, max_length=MAX_LIST)
    style: Literal["iterative", "one_shot"] | None = None
    target_density: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False,
                                         description="one_shot: density to prune to")
    instability: bool = False
    controls: list[Literal["random_prune", "random_reinit"]] = Field([], max_length=2)
    exempt: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=MAX_LIST, description="layers never pruned: 'output' or parameter names")


class RangeSpec(Strict):
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False
    step: float | None = Field(None, gt=0, allow_inf_nan=False)


class ObjectiveConfig(Strict):
    metric: Literal["instability", "accuracy", "error", "earliest_stable", "loss_barrier", "error_barrier_linear",
                    "loss_barrier_linear", "disagreement", "l2_distance", "cosine_similarity",
                    "aligned_instability", "aligned_loss_barrier", "aligned_error_barrier_linear",
                    "aligned_loss_barrier_linear", "aligned_l2_distance", "aligned_cosine_similarity"] = "instability"
    split: Split = "test"
    rewind: StepField | None = None
    level: StrictInt | None = Field(None, ge=0, le=100)
    control: Literal["none", "random_prune", "random_reinit"] = "none"
    direction: Literal["minimize", "maximize"] = "minimize"


STORAGE_URL = r"^(sqlite:///[^\x00-\x1f]+|(postgresql|mysql)(\+\w+)?://[^\x00-\x1f\s]+)$"


class SearchConfig(Strict):
    sampler: Literal["grid", "random", "tpe"] = "grid"
    trials: StrictInt = Field(1, ge=1, le=1000)
    seed: StrictInt = Field(0, ge=0, le=2**63 - 1)
    space: dict[str, Annotated[list[Any], Field(max_length=1000)] | RangeSpec] = Field(min_length=1, max_length=20)
    objective: ObjectiveConfig = ObjectiveConfig()
    storage: str | None = Field(None, max_length=1000, pattern=STORAGE_URL,
                                description="Optuna storage URL, sqlite:///PATH, postgresql://... or mysql://... "
                                            "(default: mlruns/optuna.db)")


SLURM_WORD = r"^[A-Za-z0-9_.,:+@%-]+$"  # a partition, account, qos, node list: no spaces, quotes or newlines
SLURM_EXTRA = r"^(--)?[a-z][a-z0-9-]*(=[^\x00-\x1f]+)?$"  # an sbatch option: "mail-type=END", "exclusive"


class SlurmConfig(Strict):
    """sbatch options for `lmcsweep run --workers N --executor slurm` (`--slurm KEY=VALUE` overrides
    each); how the workers are placed, never part of a job's identity."""
    partition: str | None = Field(None, max_length=200, pattern=SLURM_WORD)
    time: int | None = Field(None, ge=1, le=10**6, description="minutes")
    cpus_per_task: int | None = Field(None, ge=1, le=4096)
    gpus_per_task: int | None = Field(None, ge=0, le=1024)
    gpus_per_node: int | None = Field(None, ge=0, le=1024)
    mem: str | None = Field(None, max_length=20, pattern=r"^[1-9][0-9]*[KMGT]?$",
                            description="memory per node, as sbatch's --mem: 32G, 8000M")
    account: str | None = Field(None, max_length=200, pattern=SLURM_WORD)
    qos: str | None = Field(None, max_length=200, pattern=SLURM_WORD)
    constraint: str | None = Field(None, max_length=1000, pattern=PRINTABLE)
    exclude: str | None = Field(None, max_length=1000, pattern=SLURM_WORD)
    extra: list[Annotated[str, Field(max_length=1000, pattern=SLURM_EXTRA)]] = Field(
        [], max_length=MAX_LIST, description="other sbatch options, one a line: mail-type=END, exclusive")


class SweepConfig(Strict):
    name: str = Field(max_length=MAX_NAME, pattern=NAME_PATTERN)
    experiment: str = Field(min_length=1, max_length=MAX_NAME, pattern=PRINTABLE,
                            description="MLflow experiment (default: the sweep's name)")
    preset: str
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    replicates: StrictInt = Field(1, ge=1, le=1000, description="initialisations")
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1, description="base seed; replicate r uses seed + r")
    instability: InstabilityConfig | None = None
    imp: ImpConfig | None = None
    search: SearchConfig | None = None
    slurm: SlurmConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _experiment_defaults_to_name(cls, raw: Any) -> Any:
        """No `experiment`: the sweep's name (filled in, so a sweep that names its experiment the
        same way is the same sweep, hashes and all)."""
        if isinstance(raw, dict) and raw.get("experiment") is None and isinstance(raw.get("name"), str):
            return {**raw, "experiment": raw["name"]}
        return raw
