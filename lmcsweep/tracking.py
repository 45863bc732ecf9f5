"""MLflow: the run tree, its tags, lookups by job hash, and the query records read back from it.

The only module that imports mlflow. Runs are created through `MlflowClient` with an explicit
parent run id (tag ``mlflow.parentRunId``), never through the fluent active-run stack, so jobs can
run in other processes and on other machines.

Default store: SQLite at ``<root>/mlflow.db`` with artifacts under ``<root>/artifacts/``, both by
absolute URI (MLflow 3 refuses the old ``./mlruns`` file store).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("alembic").setLevel(logging.ERROR)

from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

TAG = "lmcsweep."
KINDS = ("sweep", "trial", "train", "branch", "interpolate", "level")
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


def default_uri(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


class Tracker:
    """A thin, explicit layer over MlflowClient for lmcsweep's run tree."""

    def __init__(self, uri: str | None = None, root: str | Path = "mlruns"):
        self.root = Path(root).resolve()
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(self.root)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.artifact_root = (self.root / "artifacts").as_uri()
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        """Made on first use: making it sets up a new store's database, which takes seconds."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # -- experiments ---------------------------------------------------------------------
    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts under the store) if missing."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=f"{self.artifact_root}/{name}")
        except Exception:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def all_experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    # -- runs ----------------------------------------------------------------------------
    def start(self, experiment_id: str, name: str, kind: str, tags: dict[str, Any],
              parent: str | None = None, params: dict[str, Any] | None = None) -> str:
        """Create a RUNNING run; `tags` are lmcsweep tags without the prefix."""
        assert kind in KINDS, kind
        all_tags = {TAG + k: str(v) for k, v in tags.items() if v is not None}
        all_tags[TAG + "kind"] = kind
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k if "." in k and not k.startswith(TAG) and k.startswith("mlflow")
                                                   else (k if k.startswith(TAG) else TAG + k), str(v))
                                            for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
        """Log (key, value, step) triples in batches of up to 1000."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(s)) for k, v, s in metrics]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_dict(self, run_id: str, obj: Any, path: str) -> None:
        self.client.log_dict(run_id, obj, path)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_figure(self, run_id: str, figure: Any, path: str) -> None:
        self.client.log_figure(run_id, figure, path)

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_dir)

    def finish(self, run_id: str, status: str = FINISHED) -> None:
        self.client.set_terminated(run_id, status)

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status=RUNNING)

    def run(self, run_id: str):
        return self.client.get_run(run_id)

    # -- lookups -------------------------------------------------------------------------
    def exists(self) -> bool:
        """False for an embedded SQLite store that was never written (nothing to look up)."""
        return not self.uri.startswith("sqlite:///") or Path(self.uri[len("sqlite:///"):]).exists()

    def search(self, filter_string: str, experiment_ids: list[str] | None = None,
               max_results: int = 50000) -> list[Any]:
        ids = experiment_ids or self.all_experiment_ids()
        if not ids:
            return []
        runs, token = [], None
        while True:
            page = self.client.search_runs(ids, filter_string=filter_string, max_results=min(max_results, 5000),
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token or len(runs) >= max_results:
                return runs

    def finished_jobs(self, jobs: list[str] | None = None) -> dict[str, Any]:
        """job hash -> its computed FINISHED run (the original, not a reuse record)."""
        flt = f"attributes.status = '{FINISHED}' and tags.`{TAG}origin` = 'computed'"
        found, jobs = {}, (None if jobs is None else set(jobs))
        for run in self.search(flt):
            job = run.data.tags.get(TAG + "job")
            if job and (jobs is None or job in jobs):
                found.setdefault(job, run)
        return found

    def runs_of_sweep(self, sweep: str, kind: str | None = None, status: str | None = None) -> list[Any]:
        flt = f"tags.`{TAG}sweep` = '{sweep}'"
        if kind:
            flt += f" and tags.`{TAG}kind` = '{kind}'"
        if status:
            flt += f" and attributes.status = '{status}'"
        return self.search(flt)

    def mark_stale_running(self, sweep: str) -> int:
        """Runs of `sweep` left RUNNING by a process that died are marked KILLED; returns how many."""
        runs = self.runs_of_sweep(sweep, status=RUNNING)
        for run in runs:
            if run.data.tags.get(TAG + "kind") == "sweep":
                continue
            self.client.set_terminated(run.info.run_id, KILLED)
        return len([r for r in runs if r.data.tags.get(TAG + "kind") != "sweep"])

    def sweep_names(self) -> list[str]:
        return sorted({r.data.tags.get(TAG + "sweep", "") for r in self.search(f"tags.`{TAG}kind` = 'sweep'")} - {""})

    def download_json(self, run_id: str, path: str) -> Any:
        local = self.client.download_artifacts(run_id, path)
        return json.loads(Path(local).read_text())


def tag(run: Any, name: str, default: Any = None) -> Any:
    """The value of lmcsweep tag `name` on an MLflow run."""
    return run.data.tags.get(TAG + name, default)
