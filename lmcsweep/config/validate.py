"""Checking a sweep file: the schema, then the checks that need more than one field, then each value
of a search space; every problem is reported at once (`ConfigError`), before anything runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..steps import Step
from .bounds import MAX_JOBS, MAX_SPACE_VALUES, bound_problems, job_count, search_trials
from .presets import PRESETS
from .resolve import resolve
from .schema import RangeSpec, SweepConfig
from .yamlfile import ConfigError, Lines, Problem, dotted, read_yaml


ALIGNABLE = ("lenet", "vgg16", "resnet20")  # the networks `align.spec` has permutation specs for
PATTERN_MESSAGES = {
    "name": "letters, digits, '_', '.' and '-' only, starting with a letter or digit (a file and run name)",
    "storage": "an Optuna storage URL: sqlite:///PATH, postgresql://... or mysql://...",
    "mem": "a size as sbatch's --mem takes it: 32G, 8000M",
    "extra": "an sbatch option: KEY=VALUE or a flag (mail-type=END, exclusive)",
    **dict.fromkeys(("partition", "account", "qos", "exclude"), "letters, digits and _.,:+@%- only (no spaces)"),
}


def _pydantic_message(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        field = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "")  # (an item of a list: the list)
        return PATTERN_MESSAGES.get(field, "control characters are not allowed")
    if kind == "value_error" and msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg[0].lower() + msg[1:] if msg else kind


def validate(raw: dict[str, Any], lines: Lines, file: str, space: bool = True) -> "SweepConfig":
    """Schema and semantic checks; every problem at once. With `space` (and a file with no other
    problem), each value of the search space is checked too, as the only change to the file; a
    combination of values that is invalid only together fails its trial when it runs. A variant of
    an Optuna search, checked on its own, does not check them again."""
    problems: list[Problem] = []
    try:
        sweep = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _field_path(err["loc"])
            problems.append(Problem(file, lines.line(loc), dotted(loc), _pydantic_message(err)))
        if isinstance(raw.get("preset"), str) and raw["preset"] not in PRESETS:
            problems.append(_unknown_preset(raw["preset"], lines, file))
        # Drop the fields in error and check the rest too, so that every mistake shows at once.
        pruned, errors = copy.deepcopy(raw), exc.errors()
        for _ in range(5):
            for err in errors:
                _delete(pruned, _field_path(err["loc"]))
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


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error's location as the file's path: the names of union branches (search.space's
    values, instability.rewind's list or onset search) stripped."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p in ("list[any]", "RangeSpec", "OnsetSearch")
                                                                  or ("[" in p and "]" in p))))


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


def _unknown_preset(name: str, lines: Lines, file: str) -> Problem:
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


def semantic_problems(sweep: SweepConfig, lines: Lines, file: str, space: bool = True) -> list[Problem]:
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
        where = (section, "rewind", "grid") if section == "instability" and cfg.onset else (section, "rewind")
        for i, step in enumerate(cfg.points if section == "instability" else cfg.rewind):
            k = hyper.iterations_of(step)
            if k in seen:
                path = (*where, i)
                problems.append(Problem(file, lines.line(path), dotted(path),
                                        f"rewind point {step} is {k} iterations, as {seen[k]} is already"))
            seen.setdefault(k, step)
            if k >= T:
                path = (*where, i)
                problems.append(Problem(file, lines.line(path), dotted(path),
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
            problems.append(Problem(file, lines.line(path), dotted(path),
                                    f"milestone {m} is past the end of training ({T} iterations)"))
    problems.extend(bound_problems(sweep, hyper, lines, file))
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
        if inst.align != "none" and hyper.model not in ALIGNABLE:
            problems.append(Problem(file, lines.line(("instability", "align")), "instability.align",
                                    f"alignment supports {', '.join(ALIGNABLE)}, not {hyper.model}"))
        if inst.init == "different":
            for i, step in enumerate(inst.rewind if inst.onset is None else []):
                if hyper.iterations_of(step) != 0:
                    path = ("instability", "rewind", i)
                    problems.append(Problem(file, lines.line(path), dotted(path), "init: different trains every "
                                            "copy from its own initialisation, so there is no rewind point: use [0it]"))
            if inst.onset is not None:
                problems.append(Problem(file, lines.line(("instability", "rewind")), "instability.rewind",
                                        "init: different trains every copy from its own initialisation, so there "
                                        "is no onset of stability to search for: use [0it]"))
            if sweep.imp is not None:
                problems.append(Problem(file, lines.line(("instability", "init")), "instability.init",
                                        "init: different is for dense networks trained from scratch; IMP's copies "
                                        "share their ticket's initialisation (remove the imp section)"))
        problems.extend(_onset_problems(sweep, lines, file))
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


def _onset_problems(sweep: SweepConfig, lines: Lines, file: str) -> list[Problem]:
    """An onset search (`instability.rewind: {search: onset, ...}`) plans as it runs: not inside an
    Optuna search; its split must be measured; with imp.instability its grid is IMP's rewind points."""
    onset, out = sweep.instability.onset, []
    if onset is None:
        return out
    if onset.split not in sweep.instability.splits:
        out.append(Problem(file, lines.line(("instability", "rewind", "split")), "instability.rewind.split",
                           f"the {onset.split} split is not in instability.splits"))
    if sweep.search is not None:
        out.append(Problem(file, lines.line(("instability", "rewind", "search")), "instability.rewind.search",
                           "an onset search picks its rewind points as it runs: not inside a `search` section"))
    if sweep.imp is not None and sweep.imp.instability and "rewind" in sweep.imp.model_fields_set:
        out.append(Problem(file, lines.line(("imp", "rewind")), "imp.rewind",
                           "with imp.instability and an onset search, IMP rewinds to the search's grid: "
                           "leave imp.rewind out"))
    return out


def _search_problems(sweep: SweepConfig, lines: Lines, file: str, space: bool) -> list[Problem]:
    problems = []
    raw = sweep.model_dump(mode="json")
    base = job_count(sweep)
    largest = base  # an upper bound of the jobs of the largest variant, key by key
    values_in_all = sum(len(v) if isinstance(v, list) else 2 for v in sweep.search.space.values())
    if values_in_all > MAX_SPACE_VALUES:  # each is checked as a variant of the file: ~0.2 ms each
        problems.append(Problem(file, lines.line(("search", "space")), "search.space",
                                f"{values_in_all} values in all, more than {MAX_SPACE_VALUES}"))
        space = False
    for key, spec in sweep.search.space.items():
        path = ("search", "space", key)
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                problems.append(Problem(file, lines.line(path), dotted(path),
                                        f"{key!r} is not a field of the sweep file"))
                break
            node = node[part]
        if isinstance(spec, list) and not spec:
            problems.append(Problem(file, lines.line(path), dotted(path), "needs at least one value"))
        values = spec if isinstance(spec, list) else [spec.low, spec.high]
        most = base
        for value in values if space and not any(p.field == dotted(path) for p in problems) else ():
            bad, variant = _variant_problem(sweep, key, value)
            if bad:
                problems.append(Problem(file, lines.line(path), dotted(path), f"value {value!r}: {bad}"))
            else:
                most = max(most, job_count(variant))
        largest = largest * most // max(base, 1)
        if isinstance(spec, RangeSpec):
            if spec.low >= spec.high:
                problems.append(Problem(file, lines.line(path), dotted(path), "low must be below high"))
            if spec.log and spec.low <= 0:
                problems.append(Problem(file, lines.line(path), dotted(path), "a log range needs low > 0"))
            if sweep.search.sampler == "grid":
                problems.append(Problem(file, lines.line(path), dotted(path),
                                        "the grid sampler needs a list of values, not a range"))
    trials = search_trials(sweep)
    if space and not problems and largest > base and largest * trials > MAX_JOBS:
        problems.append(Problem(file, lines.line(("search", "space")), "search.space",
                                f"its variants expand to up to {largest} jobs x {trials} trials, more than one "
                                f"sweep may have ({MAX_JOBS})"))
    return problems


def _variant_problem(sweep: SweepConfig, key: str, value: Any) -> tuple[str | None, SweepConfig | None]:
    """Why the sweep with `key` set to `value` (one point of its search space) is invalid (and None),
    or None and the variant."""
    raw = sweep.model_dump(mode="json", exclude_unset=True)
    raw.pop("search")
    try:
        return None, validate(apply_overrides(raw, {key: value}), Lines(), "")
    except ConfigError as exc:
        return "; ".join(f"{p.field}: {p.message}" for p in exc.problems), None
