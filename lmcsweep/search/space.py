"""A search's space: the values a trial suggests, the variant of the sweep they make, and how the
values are stored in Optuna (choices that are not plain scalars as JSON text)."""

from __future__ import annotations

import itertools
import json
import typing
from typing import Any

from pydantic import BaseModel

from ..config import SearchConfig, SweepConfig, Lines, apply_overrides, validate
from ..steps import Step


def _leaf_types(annotation: Any) -> list[Any]:
    """The plain types inside an annotation (through Optional, Union, Annotated, list)."""
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(args[0])
    return [t for a in args for t in _leaf_types(a)]


def _is_integer_field(key: str) -> bool:
    """Whether the sweep-file field at dotted `key` holds an integer or a duration."""
    model: Any = SweepConfig
    annotation: Any = None
    for part in key.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        annotation = fields[part].annotation
        model = next((t for t in _leaf_types(annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)
    leaves = _leaf_types(annotation)
    return float not in leaves and (int in leaves or Step in leaves)


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: None/bool/int/float/str as is, anything else as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def encode_point(search: SearchConfig, point: dict[str, Any]) -> dict[str, Any]:
    """A grid point as Optuna's params (what `decode_point` reads back)."""
    return {key: encode(value) if isinstance(search.space.get(key), list) else value for key, value in point.items()}


def decode_point(search: SearchConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's params of a trial as values for the sweep file (choices decoded)."""
    out = {}
    for key, value in params.items():
        spec = search.space.get(key)
        if isinstance(spec, list):
            encoded = [encode(v) for v in spec]
            out[key] = spec[encoded.index(value)] if value in encoded else value
        else:
            out[key] = value
    return out


def suggest(trial: Any, search: SearchConfig) -> dict[str, Any]:
    """The trial's values for every key of the space (dotted key -> value for the sweep file)."""
    out = {}
    for key, spec in search.space.items():
        if isinstance(spec, list):
            encoded = [encode(v) for v in spec]
            out[key] = spec[encoded.index(trial.suggest_categorical(key, encoded))]
        elif _is_integer_field(key) and float(spec.low).is_integer() and float(spec.high).is_integer() \
                and (spec.step is None or float(spec.step).is_integer()):
            out[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            out[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return out


def hp_params(overrides: dict[str, Any]) -> dict[str, Any]:
    """A variant's values as they are logged (``hp.<key>``; lists and mappings as JSON)."""
    return {key: (json.dumps(v) if isinstance(v, (list, dict)) else v) for key, v in overrides.items()}


def grid_points(search: SearchConfig) -> list[dict[str, Any]]:
    """Every point of a grid, in the order the space is written."""
    keys = list(search.space)
    return [dict(zip(keys, values)) for values in itertools.product(*(search.space[k] for k in keys))]


def variant(sweep: SweepConfig, overrides: dict[str, Any]) -> SweepConfig:
    """The sweep with `overrides` applied to its file's values and checked again (ConfigError if bad)."""
    raw = apply_overrides(sweep.model_dump(mode="json", exclude_unset=True), overrides)
    where = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return validate(raw, Lines(), f"{sweep.name} [{where}]", space=False)
