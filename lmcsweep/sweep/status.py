"""`lmcsweep status`: every sweep in the store with its jobs done / running / failed / pending.

The jobs of a sweep are rebuilt from the config its sweep run recorded (so no sweep file is
needed); a job is done when a FINISHED run of its hash exists anywhere in the store, running or
failed when this sweep's latest run of it is, and pending otherwise. Two MLflow searches in all.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

from ..config import ConfigError, SweepConfig, _Lines, validate
from ..tracking import FAILED, FINISHED, KILLED, RUNNING, TAG, Tracker, tag
from .plan import Plan, build_plan


def sweep_plans(sweep: SweepConfig, store_root: str | Path | None) -> list[Plan]:
    if sweep.search is not None:
        from .search import trial_plans

        return trial_plans(sweep, store_root)
    return [build_plan(sweep)]


def _recorded_config(tracker: Tracker, run: Any) -> SweepConfig | None:
    """The sweep config its sweep run recorded last (config-<digest>.json, else config.json)."""
    for name in (f"config-{tag(run, 'job')}.json", "config.json"):
        try:
            raw = tracker.download_json(run.info.run_id, name)
        except Exception:  # noqa: BLE001 -- missing artifact: try the next name
            continue
        try:
            return validate(raw, _Lines(), f"{tag(run, 'sweep')} (recorded config)")
        except ConfigError:
            return None
    return None


def runner_alive(store_root: str | Path, name: str) -> bool:
    """Whether a runner holds the sweep's lock now (else RUNNING runs are leftovers of a kill)."""
    path = Path(store_root) / "locks" / f"{name}.lock"
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def sweep_status(tracker: Tracker, store_root: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """One row per sweep: jobs, done, running, failed, pending (None when its config is unknown)."""
    flt = f"tags.`{TAG}sweep` = '{name}'" if name else f"tags.`{TAG}sweep` != ''"
    runs = sorted(tracker.search(flt), key=lambda r: r.info.start_time or 0)
    finished_anywhere = set(tracker.done_jobs())
    by_sweep: dict[str, list[Any]] = {}
    for run in runs:
        by_sweep.setdefault(tag(run, "sweep"), []).append(run)
    rows = []
    for sweep_name, sweep_runs in sorted(by_sweep.items()):
        latest: dict[str, str] = {}  # job hash -> status of this sweep's latest run of it
        trials = {FINISHED: 0, RUNNING: 0, FAILED: 0, KILLED: 0}
        sweep_run = None
        for run in sweep_runs:
            kind, status = tag(run, "kind"), run.info.status
            if kind == "sweep":
                sweep_run = run
            elif kind == "trial":
                trials[status] = trials.get(status, 0) + 1
            elif tag(run, "job"):
                if latest.get(tag(run, "job")) != FINISHED:
                    latest[tag(run, "job")] = status
        config = _recorded_config(tracker, sweep_run) if sweep_run is not None else None
        hashes = ({j.hash for p in sweep_plans(config, store_root) for j in p.jobs} if config is not None
                  else set(latest))
        alive = runner_alive(store_root, sweep_name)
        row = {"sweep": sweep_name, "experiment": None, "jobs": len(hashes), "done": 0, "running": 0,
               "failed": 0, "interrupted": 0, "pending": 0, "trials": trials if any(trials.values()) else None,
               "status": sweep_run.info.status if sweep_run is not None else "?",
               "runner": "active" if alive else "none"}
        for h in hashes:
            state = latest.get(h)
            if h in finished_anywhere or state == FINISHED:
                row["done"] += 1
            elif state == RUNNING:
                row["running" if alive else "interrupted"] += 1
            elif state == FAILED:
                row["failed"] += 1
            else:
                row["pending"] += 1
        if config is None:
            row["pending"] = None
        rows.append(row)
    return rows
