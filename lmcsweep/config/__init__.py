"""The sweep file, from YAML to concrete training settings.

- `schema`: the strict, typed pydantic models of a sweep file (`SweepConfig` and its sections).
- `presets`: Table 1 of the paper (`PRESETS`), what a sweep's `train` section overrides.
- `yamlfile`: reading YAML with the line of every field (`Lines`); `Problem` and `ConfigError`.
- `validate`: every mistake in a file at once (`validate`, `load_sweep`), ``FILE:LINE: field.path: message``,
  before anything runs or is written.
- `bounds`: what plan and run can do (training length, model options, at most `MAX_JOBS` jobs a sweep).
- `resolve`: preset + overrides -> `Hyper`, the concrete settings, all durations in iterations.

A job's hash, and the revisions in it, live in `lmcsweep.identity`.
"""

from .presets import PRESETS, Preset
from .resolve import Hyper, dataset_of, resolve, train_size
from .schema import (
    DATASETS,
    TRAIN_SIZES,
    DataConfig,
    ImpConfig,
    InstabilityConfig,
    ModelOptions,
    Noise,
    ObjectiveConfig,
    RangeSpec,
    SearchConfig,
    SlurmConfig,
    Split,
    StepField,
    Strict,
    SweepConfig,
    SyntheticConfig,
    TrainConfig,
)
from .validate import apply_overrides, load_sweep, semantic_problems, validate
from .yamlfile import ConfigError, Lines, Problem, read_yaml

__all__ = [
    "DATASETS", "TRAIN_SIZES", "DataConfig", "ImpConfig", "InstabilityConfig", "ModelOptions", "Noise",
    "ObjectiveConfig", "RangeSpec", "SearchConfig", "SlurmConfig", "Split", "StepField", "Strict", "SweepConfig",
    "SyntheticConfig", "TrainConfig",
    "PRESETS", "Preset",
    "ConfigError", "Lines", "Problem", "read_yaml",
    "apply_overrides", "load_sweep", "semantic_problems", "validate",
    "Hyper", "dataset_of", "resolve", "train_size",
]
