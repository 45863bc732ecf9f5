"""What the benchmarks that time the project's path share: a sweep run through the Runner with
MLflow tracking on a temporary SQLite store, by a tracking process as in `lmcsweep run`, timed from
the first job to the last write stored (store, experiment, sweep run and plan made before the
clock starts)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from lmcsweep.config import load_sweep
from lmcsweep.store import Store
from lmcsweep.run.scheduler import Outcome, Runner
from lmcsweep.plan.build import build_plan
from lmcsweep.tracking import TrackingProcess


def time_plan(sweep_text: str) -> tuple[float, Outcome]:
    """Seconds `Runner.run_plan` takes on the sweep `sweep_text` in a fresh store, and its outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(sweep_text)
        sweep = load_sweep(path)
        tracker, store = TrackingProcess(root=Path(tmp) / "store"), Store(Path(tmp) / "store")
        try:
            experiment = tracker.experiment(sweep.experiment)
            runner = Runner(tracker, store, progress=False)
            parent = runner.sweep_run(sweep, experiment)
            plan = build_plan(sweep)
            outcome = Outcome()
            start = time.perf_counter()
            runner.run_plan(plan, experiment, parent, outcome)
            errors = tracker.write_errors()  # every write stored
            seconds = time.perf_counter() - start
        finally:
            tracker.close()
        if errors:
            raise RuntimeError(f"tracking writes failed: {errors}")
        return seconds, outcome
