"""What plan and run can do, checked before anything runs: a sweep `validate` accepts plans in about a
second and fails no job for a reason its file already shows.

The schema bounds each count on its own (`schema`); here are the bounds that need more than one
field: the length of training, the batch against the training set, the model's options and the
synthetic data's shape against the preset's network, and the number of jobs the sweep expands to.
"""

from __future__ import annotations

import math
from typing import Any

from .presets import PRESETS
from .resolve import Hyper, train_size
from .schema import SweepConfig, SyntheticConfig
from .yamlfile import Lines, Problem

MAX_ITERATIONS = 10**9  # ImageNet's 90 epochs are ~450,000 iterations
MAX_JOBS = 50_000  # a plan is built at ~25 µs a job: about a second for the largest sweep allowed, room
# for ~9 times sweeps/vgg16_imp.yaml (5,613 jobs: IMP with controls and instability)
MAX_TRIALS = 1000  # points of a grid (the random and tpe samplers' `trials` has the same bound)
MAX_SPACE_VALUES = 2000  # values of a search space in all (each is checked as a variant of the file)
MODEL_OPTIONS = {"lenet": {"hidden"}, "resnet20": {"depth", "width"}, "vgg16": {"width"}}


def bound_problems(sweep: SweepConfig, hyper: Hyper, lines: Lines, file: str) -> list[Problem]:
    """The problems of a schema-valid sweep with a known preset against what plan and run can do."""
    out: list[Problem] = []

    def add(path: tuple[Any, ...], message: str) -> None:
        out.append(Problem(file, lines.line(path), ".".join(map(str, path)) or "(top)", message))

    for name in ("iterations", "warmup", "eval_every", "checkpoint_every"):
        value = getattr(hyper, name)
        if value > MAX_ITERATIONS:
            add(("train", name), f"{value} iterations is more than plan and run allow ({MAX_ITERATIONS})")
    examples = train_size(sweep)
    if hyper.batch_size > examples:
        add(("train", "batch_size"), f"a batch of {hyper.batch_size} is larger than the {examples} training "
                                     "examples")
    model = PRESETS[sweep.preset].model
    options = sweep.train.model.model_dump(exclude_none=True)
    for key in sorted(set(options) - MODEL_OPTIONS.get(model, set())):
        add(("train", "model", key), f"not an option of {model} (its options: "
                                     f"{', '.join(sorted(MODEL_OPTIONS.get(model, ()))) or 'none'})")
    if model == "resnet20":
        depth, width = options.get("depth"), options.get("width")
        if depth is not None and (depth < 8 or (depth - 2) % 6):
            add(("train", "model", "depth"), f"resnet20's depth is 6n+2 with n >= 1 (8, 14, 20, ...), not {depth}")
        if width is not None and (width != int(width) or width < 1):
            add(("train", "model", "width"), f"resnet20's width is a whole number of channels, not {width}")
    if (sweep.data.dataset or PRESETS[sweep.preset].dataset) == "synthetic":
        _synthetic_problems(sweep, model, add)
    _size_problems(sweep, add)
    if sweep.search is not None:
        _objective_problems(sweep, hyper, add)
    return out


def _objective_problems(sweep: SweepConfig, hyper: Hyper, add) -> None:
    """An objective the trials' records can give (else every trial fails when its value is read)."""
    objective, inst, imp = sweep.search.objective, sweep.instability, sweep.imp
    path = ("search", "objective")
    level, control = objective.level, objective.control
    if level is not None and imp is None:
        return add(path + ("level",), "a level needs an `imp` section")
    if level is not None and level > imp_levels(sweep):
        return add(path + ("level",), f"the sweep prunes {imp_levels(sweep)} levels, not {level}")
    if control != "none" and (level is None or level < 1 or control not in imp.controls):
        return add(path + ("control",), f"no {control} runs: they exist at levels >= 1 with {control} in imp.controls")
    if objective.metric in ("accuracy", "error") and level is None:
        return None  # every replicate's training has a final accuracy
    if objective.metric.startswith("aligned_") and (inst is None or inst.align == "none"):
        return add(path + ("metric",), f"{objective.metric} needs instability.align: weights or activations")
    if objective.metric in ("instability", "earliest_stable"):
        if inst is None or (level is not None and not imp.instability):
            return add(path + ("metric",), f"{objective.metric} needs an `instability` section"
                       + (" and imp.instability: true" if level is not None else ""))
        if objective.split not in inst.splits:
            return add(path + ("split",), f"the {objective.split} split is not in instability.splits")
        if objective.metric == "earliest_stable":
            return None
    points = {hyper.iterations_of(step) for step in (imp.rewind if level is not None else inst.points)}
    if objective.rewind is not None:
        k = hyper.iterations_of(objective.rewind)
    elif objective.metric in ("accuracy", "error"):
        return None  # branches of every rewind point
    else:
        k = min(hyper.iterations_of(step) for step in inst.points)
    if k not in points:
        where = "imp.rewind" if level is not None else "instability.rewind"
        add(path + ("rewind",), f"rewind {k} iterations is not one of the sweep's ({where}: "
                                f"{', '.join(map(str, sorted(points)))})")


def _synthetic_problems(sweep: SweepConfig, model: str, add) -> None:
    synthetic = sweep.data.synthetic or SyntheticConfig()
    c, h, w = synthetic.shape
    if c * h * w * (synthetic.train + synthetic.test) > 2**31:
        add(("data", "synthetic"), "the synthetic data set holds more than 2^31 values (examples x shape)")
    if model in ("resnet50", "inception_v3") and c != 3:
        add(("data", "synthetic", "shape"), f"{model} takes 3 input channels, not {c}")
    if model == "vgg16" and min(h, w) < 32:
        add(("data", "synthetic", "shape"), "vgg16 pools five times: height and width must be at least 32")
    if model == "inception_v3" and min(h, w) < 75:
        add(("data", "synthetic", "shape"), "inception_v3 takes images of at least 75 x 75")


def imp_levels(sweep: SweepConfig) -> int:
    """imp.levels, else the preset's (as `plan.imp` counts them): one for one_shot, else as many
    levels of `fraction` as reach the preset's IMP density."""
    imp, preset = sweep.imp, PRESETS[sweep.preset]
    if imp.levels is not None:
        return imp.levels
    if (imp.style or preset.imp_style) == "one_shot":
        return 1
    return max(1, math.ceil(math.log(preset.imp_density) / math.log(1 - imp.fraction) - 1e-9))


def imp_rewinds(sweep: SweepConfig) -> list:
    """IMP's rewind points: imp.rewind, or with imp.instability and an onset search its grid."""
    inst, imp = sweep.instability, sweep.imp
    if inst is not None and inst.onset is not None and imp.instability:
        return inst.points
    return list(imp.rewind)


def job_count(sweep: SweepConfig) -> int:
    """How many jobs one plan of the sweep has at most (rewind points that coincide count twice)."""
    inst, imp = sweep.instability, sweep.imp

    def branches(copies: int) -> int:  # copies and the interpolations of their pairs
        pairs = copies // 2 if inst is not None and inst.pairs == "disjoint" else copies * (copies - 1) // 2
        return copies + (pairs if inst is not None else 0)

    per_replicate = 1
    if inst is not None:
        per_replicate += len(inst.points) * branches(inst.copies)
    if imp is not None:
        copies = inst.copies if imp.instability and inst is not None else 1
        per_level = 1 + (1 + len(imp.controls)) * branches(copies)
        per_replicate += len(imp_rewinds(sweep)) * (imp_levels(sweep) + 1) * per_level
    return sweep.replicates * per_replicate


def search_trials(sweep: SweepConfig) -> int:
    """The variants a sweep plans: the points of a grid, else `search.trials` (1 without a search)."""
    search = sweep.search
    if search is None:
        return 1
    if search.sampler == "grid":
        return math.prod(len(v) if isinstance(v, list) else 1 for v in search.space.values())
    return search.trials


def _size_problems(sweep: SweepConfig, add) -> None:
    if sweep.imp is not None and imp_levels(sweep) > 100:
        add(("imp", "fraction"), f"pruning {sweep.imp.fraction} a level takes {imp_levels(sweep)} levels to "
                                 f"reach the preset's density: set imp.levels (at most 100) or a larger fraction")
        return
    trials, where = search_trials(sweep), ""
    if sweep.search is not None:
        if sweep.search.sampler == "grid" and trials > MAX_TRIALS:
            add(("search", "space"), f"the grid has {trials} points, more than {MAX_TRIALS}")
            return
        where = f" x {trials} trials"
    jobs = job_count(sweep)
    if jobs * trials > MAX_JOBS:
        add(("replicates",) if "replicates" in sweep.model_fields_set else (),
            f"the sweep expands to about {jobs} jobs{where}, more than one sweep may have ({MAX_JOBS}): lower "
            "replicates, copies, rewind points, levels or trials, or split it into several sweeps")
