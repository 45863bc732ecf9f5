"""The sweep file: a strict, typed schema, YAML loading with line numbers, the Table-1 presets,
and resolution of a sweep into concrete training settings (a job's hash: `identity`).

Every mistake in a sweep file is reported at once as ``FILE:LINE: field.path: message``
(`ConfigError`), before anything runs or is written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, StrictInt, ValidationError

from . import identity as job_identity
from .steps import Step, parse_step

# --------------------------------------------------------------------------------------------
# Types


def _step(value: Any) -> Step:
    return parse_step(value)


StepField = Annotated[Step, BeforeValidator(_step), PlainSerializer(str, return_type=str)]
DATASETS = ("mnist", "fashion_mnist", "cifar10", "imagenet", "synthetic")
TRAIN_SIZES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000, "imagenet": 1281167}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Presets: Table 1 of the paper (facts from the paper; choices it leaves open follow OpenLTH)


@dataclass(frozen=True)
class Preset:
    """One row of Table 1, with the choices the paper leaves open made explicit."""

    name: str
    model: str
    dataset: str
    optimizer: str
    lr: float
    batch_size: int
    iterations: Step
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | step | linear
    milestones: tuple[Step, ...] = ()
    gamma: float = 0.1
    final_lr: float = 0.0
    warmup: Step = Step(0)
    augmentation: str = "none"
    imp_style: str = "iterative"
    imp_density: float = 0.035  # the paper's IMP target density for this network
    imp_exempt: tuple[str, ...] = ()
    paper_accuracy: str = ""
    paper_params: str = ""


def _cifar(name: str, model: str, lr: float, warmup: int, density: float, exempt: tuple[str, ...],
           acc: str, params: str) -> Preset:
    return Preset(
        name=name, model=model, dataset="cifar10", optimizer="sgd", lr=lr, batch_size=128,
        iterations=Step(63000), momentum=0.9, weight_decay=1e-4, schedule="step",
        milestones=(Step(32000), Step(48000)), warmup=Step(warmup), augmentation="crop_flip",
        imp_density=density, imp_exempt=exempt, paper_accuracy=acc, paper_params=params,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(name="lenet", model="lenet", dataset="mnist", optimizer="adam", lr=1.2e-3, batch_size=60,
               iterations=Step(24000), imp_density=0.8**15, paper_accuracy="98.3 ± 0.1", paper_params="266K"),
        _cifar("resnet20", "resnet20", 0.1, 0, 0.8**8, (), "91.7 ± 0.1", "274K"),
        _cifar("resnet20_low", "resnet20", 0.01, 0, 0.8**11, (), "88.8 ± 0.1", "274K"),
        _cifar("resnet20_warmup", "resnet20", 0.03, 30000, 0.8**11, (), "89.7 ± 0.3", "274K"),
        _cifar("vgg16", "vgg16", 0.1, 0, 0.015, ("output",), "93.7 ± 0.1", "14.7M"),
        _cifar("vgg16_low", "vgg16", 0.01, 0, 0.8**13, ("output",), "91.7 ± 0.1", "14.7M"),
        _cifar("vgg16_warmup", "vgg16", 0.1, 30000, 0.015, ("output",), "93.4 ± 0.1", "14.7M"),
        Preset(name="resnet50", model="resnet50", dataset="imagenet", optimizer="sgd", lr=0.4, batch_size=1024,
               iterations=Step(90, "ep"), momentum=0.9, weight_decay=1e-4, schedule="step",
               milestones=(Step(30, "ep"), Step(60, "ep"), Step(80, "ep")), warmup=Step(5, "ep"),
               augmentation="rrc_flip", imp_style="one_shot", imp_density=0.3,
               paper_accuracy="76.1 ± 0.1", paper_params="25.5M"),
        Preset(name="inception_v3", model="inception_v3", dataset="imagenet", optimizer="sgd", lr=0.03,
               batch_size=1024, iterations=Step(171, "ep"), momentum=0.9, weight_decay=1e-4,
               schedule="linear", final_lr=0.005, augmentation="rrc_flip", imp_style="one_shot",
               imp_density=0.3, paper_accuracy="78.1 ± 0.1", paper_params="27.1M"),
    ]
}

# --------------------------------------------------------------------------------------------
# The schema


class SyntheticConfig(Strict):
    shape: tuple[int, int, int] = (3, 32, 32)
    classes: StrictInt = Field(10, ge=2)
    train: StrictInt = Field(512, ge=1)
    test: StrictInt = Field(256, ge=1)
    seed: StrictInt = Field(0, ge=0)


class DataConfig(Strict):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "imagenet", "synthetic"] | None = Field(
        None, description="data set; defaults to the preset's")
    loader: Literal["tensor", "ffcv"] = Field("tensor", description="in-memory tensors or FFCV .beton files")
    root: str | None = Field(None, description="folder holding the data set (else $LMCSWEEP_DATA, then defaults)")
    download: bool = Field(False, description="allow torchvision to download the data set into root")
    subset_train: StrictInt | None = Field(None, ge=1, description="use only the first N training examples")
    subset_test: StrictInt | None = Field(None, ge=1, description="use only the first N test examples")
    augmentation: Literal["none", "crop_flip", "rrc_flip"] | None = Field(None, description="override")
    synthetic: SyntheticConfig | None = None


class ModelOptions(Strict):
    width: float | None = Field(None, gt=0, description="resnet20: first-stage channels; vgg16: multiplier")
    depth: StrictInt | None = Field(None, ge=2, description="resnet20: 6n+2 layers")
    hidden: list[StrictInt] | None = Field(None, description="lenet: hidden layer sizes")


class TrainConfig(Strict):
    """Overrides of the preset; anything left out comes from the preset."""

    iterations: StepField | None = None
    batch_size: StrictInt | None = Field(None, ge=1)
    optimizer: Literal["sgd", "adam"] | None = None
    lr: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)
    schedule: Literal["constant", "step", "linear"] | None = None
    milestones: list[StepField] | None = None
    gamma: float | None = Field(None, gt=0, le=1)
    final_lr: float | None = Field(None, ge=0)
    warmup: StepField | None = None
    model: ModelOptions = ModelOptions()
    eval_every: StepField | None = Field(None, description="test accuracy cadence (default: 10 times a run)")
    checkpoint_every: StepField | None = Field(None, description="resume checkpoint cadence (default: 10 times a run)")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: StrictInt = Field(1, ge=1, description="kernel threads per network trained on CPU; part of a job's "
                             "identity (MKL and oneDNN sum weight gradients differently for other counts)")


Noise = Literal["data_order", "augmentation"]
Split = Literal["test", "train"]


class InstabilityConfig(Strict):
    rewind: list[StepField] = Field(min_length=1, description="rewind points k")
    copies: StrictInt = Field(2, ge=2, description="copies trained from each k")
    pairs: Literal["all", "disjoint"] = Field(
        "all", description="compare every pair of copies, or (0,1), (2,3), ... only (pairs share no copy)")
    alphas: StrictInt = Field(30, ge=2, description="evenly spaced points in [0, 1], endpoints included")
    splits: list[Split] = Field(["test", "train"], min_length=1)
    noise: list[Noise] = Field(["data_order", "augmentation"], min_length=1)
    optimizer: Literal["continue", "restart"] = Field(
        "continue", description="copies continue the optimizer state at k, or restart it")
    schedule: Literal["continue", "restart"] = Field(
        "continue", description="copies train T - k more iterations on the schedule where it was at k, or T "
        "more with the learning-rate schedule restarted from iteration 0 (the paper's Figure 4 control)")
    bn: Literal["interpolate", "reset"] = Field(
        "interpolate", description="BatchNorm statistics along the path: interpolated, or re-estimated")
    bn_batches: StrictInt = Field(20, ge=1, description="training batches used to re-estimate BatchNorm (bn: reset)")
    train_examples: StrictInt | None = Field(
        None, ge=1, description="evaluate the train split on its first N examples (default: all)")


class ImpConfig(Strict):
    levels: StrictInt | None = Field(None, ge=1, description="pruning rounds, density (1 - fraction)^level; default: "
                               "down to the preset's IMP density (one level for one_shot)")
    fraction: float = Field(0.2, gt=0, lt=1, description="fraction of remaining weights pruned per level")
    rewind: list[StepField] = Field([Step(0)], min_length=1)
    style: Literal["iterative", "one_shot"] | None = None
    target_density: float | None = Field(None, gt=0, lt=1, description="one_shot: density to prune to")
    instability: bool = False
    controls: list[Literal["random_prune", "random_reinit"]] = []
    exempt: list[str] | None = Field(None, description="layers never pruned: 'output' or parameter names")


class RangeSpec(Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = None


class ObjectiveConfig(Strict):
    metric: Literal["instability", "accuracy", "error", "earliest_stable"] = "instability"
    split: Split = "test"
    rewind: StepField | None = None
    level: StrictInt | None = Field(None, ge=0)
    control: Literal["none", "random_prune", "random_reinit"] = "none"
    direction: Literal["minimize", "maximize"] = "minimize"


class SearchConfig(Strict):
    sampler: Literal["grid", "random", "tpe"] = "grid"
    trials: StrictInt = Field(1, ge=1)
    seed: StrictInt = Field(0, ge=0)
    space: dict[str, list[Any] | RangeSpec] = Field(min_length=1)
    objective: ObjectiveConfig = ObjectiveConfig()
    storage: str | None = Field(None, description="Optuna storage URL (default: mlruns/optuna.db)")


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    experiment: str = Field(min_length=1)
    preset: str
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    replicates: StrictInt = Field(1, ge=1, description="initialisations")
    seed: StrictInt = Field(0, ge=0, description="base seed; replicate r uses seed + r")
    instability: InstabilityConfig | None = None
    imp: ImpConfig | None = None
    search: SearchConfig | None = None


# --------------------------------------------------------------------------------------------
# Errors with file and line


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a sweep file; str() lists them one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.field))
        super().__init__("\n".join(str(p) for p in self.problems))


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


class _Lines:
    """Maps a path in the YAML document to the line it was written on (1-based)."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}

    def line(self, path: tuple[Any, ...]) -> int:
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def _to_python(node: yaml.Node, path: tuple[Any, ...], lines: _Lines, problems: list[Problem], file: str) -> Any:
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
            if key in out:
                problems.append(Problem(file, key_node.start_mark.line + 1, _dotted(path + (key,)),
                                        "duplicate key"))
                continue
            lines.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, path + (key,), lines, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, path + (i,), lines, problems, file) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    """The value of a composed node, as yaml.safe_load gives it (`key:` with nothing after is None)."""
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], _Lines]:
    """The document as plain Python plus its line map; YAML syntax errors become ConfigError."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([Problem(file, 0, "(file)", f"cannot read: {exc.strerror}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        message = f"{exc.problem}"
        if exc.context and exc.context_mark:  # e.g. "while scanning a quoted scalar": where it began
            start = exc.context_mark.line + 1
            message += f" ({exc.context}, which starts at line {start})"
            if line > len(text.splitlines()):  # the end of the file: point at the opening instead
                line = start
        raise ConfigError([Problem(file, line, "(yaml)", f"syntax error: {message}")]) from None
    lines, problems = _Lines(), []
    if node is None:
        raise ConfigError([Problem(file, 1, "(top)", "the file is empty")])
    raw = _to_python(node, (), lines, problems, file)
    if not isinstance(raw, dict):
        problems.append(Problem(file, 1, "(top)", "a sweep file is a mapping of fields"))
    if problems:
        raise ConfigError(problems)
    return raw, lines


def _pydantic_message(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "value_error" and msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg[0].lower() + msg[1:] if msg else kind


def validate(raw: dict[str, Any], lines: _Lines, file: str, space: bool = True) -> "SweepConfig":
    """Schema and semantic checks; every problem at once. With `space` (and a file with no other
    problem), each value of the search space is checked too, as the only change to the file; a
    combination of values that is invalid only together fails its trial when it runs. A variant of
    an Optuna search, checked on its own, does not check them again."""
    problems: list[Problem] = []
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("list[any]", "RangeSpec")))
            # union branches of search.space add the branch name to the path; strip them
            loc = tuple(p for p in loc if not (isinstance(p, str) and "[" in p and "]" in p))
            problems.append(Problem(file, lines.line(loc), _dotted(loc), _pydantic_message(err)))
        if isinstance(raw.get("preset"), str) and raw["preset"] not in PRESETS:
            problems.append(_unknown_preset(raw["preset"], lines, file))
        # Drop the fields in error and check the rest too, so that every mistake shows at once.
        pruned, errors = copy.deepcopy(raw), exc.errors()
        for _ in range(5):
            for err in errors:
                _delete(pruned, err["loc"])
            try:
                problems.extend(semantic_problems(SweepConfig.model_validate(pruned), lines, file, False))
                break
            except ValidationError as again:
                errors = again.errors()
            except (KeyError, ValueError, TypeError):
                break
        raise ConfigError(_dedupe(problems)) from None
    problems.extend(semantic_problems(sweep, lines, file, space))
    if problems:
        raise ConfigError(_dedupe(problems))
    return sweep


def _delete(raw: Any, loc: tuple[Any, ...]) -> None:
    node = raw
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, list) and len(loc) >= 2:  # a bad item: drop its whole list (indices keep their lines)
        _delete(raw, loc[:-1])
    elif isinstance(node, dict) and loc:
        node.pop(loc[-1], None)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.line, p.field, p.message) not in seen:
            seen.add((p.line, p.field, p.message))
            out.append(p)
    return out


def _unknown_preset(name: str, lines: _Lines, file: str) -> Problem:
    return Problem(file, lines.line(("preset",)), "preset",
                   f"unknown preset {name!r}; one of: {', '.join(PRESETS)}")


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> "SweepConfig":
    """Read and check a sweep file. `overrides` ({'train.lr': 0.01}) are applied before checking."""
    raw, lines = read_yaml(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate(raw, lines, str(path))


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with dotted-path values set ({'train.lr': 0.01} sets raw['train']['lr'])."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------------
# Resolution: preset + overrides -> concrete settings in iterations


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

    def identity(self) -> dict[str, Any]:
        """The fields that determine a training result (cadences and compile excluded), with the
        revision of the random draws (`DRAWS`) where training makes draws beyond the data order."""
        out = dict(self.__dict__)
        for key in ("eval_every", "checkpoint_every", "compile"):
            out.pop(key)
        if self.augmentation != "none" or self.model in job_identity.DROPOUT_MODELS:
            out["draws"] = job_identity.DRAWS  # read when called, so that raising it takes effect
        return out


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
    )


def _default_augmentation(dataset: str) -> str:
    return {"cifar10": "crop_flip", "imagenet": "rrc_flip"}.get(dataset, "none")


def semantic_problems(sweep: SweepConfig, lines: _Lines, file: str, space: bool = True) -> list[Problem]:
    """Checks that need more than one field: known preset, rewind points inside training, ..."""
    problems: list[Problem] = []
    if sweep.preset not in PRESETS:
        return [_unknown_preset(sweep.preset, lines, file)]
    hyper = resolve(sweep)
    T = hyper.iterations
    if T < 1:
        problems.append(Problem(file, lines.line(("train", "iterations")), "train.iterations",
                                "training must last at least one iteration"))
    sections = [("instability", sweep.instability), ("imp", sweep.imp)]
    for section, cfg in sections:
        if cfg is None:
            continue
        seen: dict[int, Step] = {}
        for i, step in enumerate(cfg.rewind):
            k = step.to_iterations(hyper.iterations_per_epoch)
            if k in seen:
                path = (section, "rewind", i)
                problems.append(Problem(file, lines.line(path), _dotted(path),
                                        f"rewind point {step} is {k} iterations, as {seen[k]} is already"))
            seen.setdefault(k, step)
            if k >= T:
                path = (section, "rewind", i)
                problems.append(Problem(file, lines.line(path), _dotted(path),
                                        f"rewind point {step} ({k} iterations) is not before the end of "
                                        f"training ({T} iterations)"))
    for name in ("eval_every", "checkpoint_every"):
        if getattr(hyper, name) < 1:
            problems.append(Problem(file, lines.line(("train", name)), f"train.{name}",
                                    "the cadence must be at least one iteration"))
    if list(hyper.milestones) != sorted(set(hyper.milestones)) and sweep.train.milestones is not None:
        problems.append(Problem(file, lines.line(("train", "milestones")), "train.milestones",
                                "milestones must increase"))
    for i, m in enumerate(hyper.milestones):
        if m > T and sweep.train.milestones is not None:
            path = ("train", "milestones", i)
            problems.append(Problem(file, lines.line(path), _dotted(path),
                                    f"milestone {m} is past the end of training ({T} iterations)"))
    if hyper.warmup > T:
        problems.append(Problem(file, lines.line(("train", "warmup")), "train.warmup",
                                f"warmup ({hyper.warmup} iterations) is longer than training ({T})"))
    inst = sweep.instability
    if inst is not None:
        for name in ("splits", "noise"):
            values = getattr(inst, name)
            if len(set(values)) != len(values):
                problems.append(Problem(file, lines.line(("instability", name)), f"instability.{name}",
                                        "values repeat"))
        if inst.pairs == "disjoint" and inst.copies % 2:
            problems.append(Problem(file, lines.line(("instability", "copies")), "instability.copies",
                                    f"pairs: disjoint compares copies (0,1), (2,3), ...: needs an even number "
                                    f"of copies, got {inst.copies}"))
    imp = sweep.imp
    if imp is not None and (imp.style or PRESETS[sweep.preset].imp_style) == "one_shot" and imp.levels not in (None, 1):
        problems.append(Problem(file, lines.line(("imp", "levels")), "imp.levels",
                                "one_shot pruning has exactly one level"))
    if imp is not None and imp.instability and inst is None:
        problems.append(Problem(file, lines.line(("imp", "instability")), "imp.instability",
                                "needs an `instability` section (copies, alphas, splits, noise)"))
    if imp is not None and len(set(imp.controls)) != len(imp.controls):
        problems.append(Problem(file, lines.line(("imp", "controls")), "imp.controls", "values repeat"))
    if sweep.search is not None:
        problems.extend(_search_problems(sweep, lines, file, space and not problems))
    return problems


def _search_problems(sweep: SweepConfig, lines: _Lines, file: str, space: bool) -> list[Problem]:
    problems = []
    raw = sweep.model_dump(mode="json")
    for key, spec in sweep.search.space.items():
        path = ("search", "space", key)
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                problems.append(Problem(file, lines.line(path), _dotted(path),
                                        f"{key!r} is not a field of the sweep file"))
                break
            node = node[part]
        if isinstance(spec, list) and not spec:
            problems.append(Problem(file, lines.line(path), _dotted(path), "needs at least one value"))
        values = spec if isinstance(spec, list) else [spec.low, spec.high]
        for value in values if space and not any(p.field == _dotted(path) for p in problems) else ():
            bad = _variant_problem(sweep, key, value)
            if bad:
                problems.append(Problem(file, lines.line(path), _dotted(path), f"value {value!r}: {bad}"))
        if isinstance(spec, RangeSpec):
            if spec.low >= spec.high:
                problems.append(Problem(file, lines.line(path), _dotted(path), "low must be below high"))
            if spec.log and spec.low <= 0:
                problems.append(Problem(file, lines.line(path), _dotted(path), "a log range needs low > 0"))
            if sweep.search.sampler == "grid":
                problems.append(Problem(file, lines.line(path), _dotted(path),
                                        "the grid sampler needs a list of values, not a range"))
    return problems


def _variant_problem(sweep: SweepConfig, key: str, value: Any) -> str | None:
    """Why the sweep with `key` set to `value` (one point of its search space) is invalid, or None."""
    raw = sweep.model_dump(mode="json", exclude_unset=True)
    raw.pop("search")
    try:
        validate(apply_overrides(raw, {key: value}), _Lines(), "")
    except ConfigError as exc:
        return "; ".join(f"{p.field}: {p.message}" for p in exc.problems)
    return None
