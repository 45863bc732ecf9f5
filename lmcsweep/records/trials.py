"""`lmcsweep query --kind trials`: one record per trial of each search in the store (its current
study: the one of the sweep file it was last run with), read from the Optuna study itself: number,
hyperparameters, objective, state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..tracking import Tracker
from .status import recorded_configs

FIELDS = ("sweep", "trial", "objective", "state")


def trial_records(tracker: Tracker, store_root: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """The trials of every search (or sweep `name`), in number order: sweep, trial, one column per
    hyperparameter (its sweep-file key), objective (None unless COMPLETE), state (COMPLETE, FAIL,
    RUNNING: a trial running now or interrupted, WAITING: a grid point not asked yet), error."""
    from ..search.study import ERROR, RUN_ID, study_trials  # optuna: loaded only for searches

    out = []
    for sweep_name, config in sorted(recorded_configs(tracker, name).items()):
        if config.search is None:
            continue
        for t in study_trials(config, store_root):
            out.append({"sweep": sweep_name, "trial": t["number"], **t["params"], "objective": t["value"],
                        "state": t["state"], "error": t[ERROR], "run_id": t[RUN_ID]})
    return out
