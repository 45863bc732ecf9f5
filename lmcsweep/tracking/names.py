"""The run tree's vocabulary: lmcsweep's tag prefix, its run kinds and MLflow's run statuses."""

from __future__ import annotations

from typing import Any

TAG = "lmcsweep."
KINDS = ("sweep", "trial", "train", "branch", "interpolate", "level")
# MLflow 3's experiment type (the UI's side bar and landing tab follow it): model training
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


def tag(run: Any, name: str, default: Any = None) -> Any:
    """The value of lmcsweep tag `name` on an MLflow run."""
    return run.data.tags.get(TAG + name, default)
