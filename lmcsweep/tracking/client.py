"""`Tracker`: lmcsweep's run tree over `MlflowClient`, its tags, and lookups by job hash.

Runs are created through `MlflowClient` with an explicit parent run id (tag ``mlflow.parentRunId``),
never through the fluent active-run stack, so jobs can run in other processes and on other
machines. Lookups read the store's database directly where they can (`database`).

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

from ..store import sqlite_path
from . import database
from .database import default_uri
from .names import EXPERIMENT_KIND, FINISHED, KILLED, KINDS, RUNNING, TAG, tag
from .patience import Patient, quiet_mlflow_retries, remote

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("alembic").setLevel(logging.ERROR)

# mlflow itself is imported where it is first used: importing it takes seconds, and `lmcsweep plan`
# answers from the SQLite file without it.


class Tracker:
    """A thin, explicit layer over MlflowClient for lmcsweep's run tree."""

    def __init__(self, uri: str | None = None, root: str | Path = "mlruns"):
        self.root = Path(root).resolve()
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(self.root)
        self.artifact_root = (self.root / "artifacts").as_uri()
        self._client = None

    @property
    def client(self):
        """The MlflowClient, made on first use: making it sets up a new store's database."""
        if self._client is None:
            db = sqlite_path(self.uri)
            new = db is not None and not db.exists() and not database.seed_from_template(db, self.artifact_root)
            if remote(self.uri):
                quiet_mlflow_retries()
            from mlflow.tracking import MlflowClient

            logging.getLogger("mlflow").setLevel(logging.ERROR)  # importing mlflow set it to INFO
            if new:  # the schema made in a file of its own, then linked into place: a store whose
                # migrations stopped half way (a full disk) would fail every later command
                db.parent.mkdir(parents=True, exist_ok=True)
                tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
                try:
                    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
                    try:
                        os.link(tmp, db)  # never over a store made meanwhile
                    except FileExistsError:
                        new = False
                finally:
                    tmp.unlink(missing_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
            if remote(self.uri):  # a server that goes away for a while: calls wait for it (`patience`)
                self._client = Patient(self._client, self.uri)
            if new:
                database.save_template(db)
        return self._client

    def write_errors(self) -> dict[str, str]:
        """run id -> the first write that failed on it. Writes here raise at once, so always empty;
        `TrackingProcess` writes in the background and reports them here."""
        return {}

    def unavailable(self) -> str | None:
        """The line saying the tracking server stopped answering (its retry window passed), else None."""
        return getattr(self._client, "down", None)

    # -- experiments ---------------------------------------------------------------------
    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts under the store) if missing, as a
        model-training experiment (`EXPERIMENT_KIND`: the MLflow UI opens it on its runs table,
        not on the GenAI overview); one made before without the tag gets it."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if exp.tags.get(EXPERIMENT_KIND[0]) is None:
                self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=f"{self.artifact_root}/{name}",
                                                 tags=dict([EXPERIMENT_KIND]))
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
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k if "." in k and not k.startswith(TAG) and k.startswith("mlflow")
                                                   else (k if k.startswith(TAG) else TAG + k), str(v))
                                            for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
        """Log (key, value, step) triples in batches of up to 1000."""
        now = int(time.time() * 1000)
        from mlflow.entities import Metric

        items = [Metric(k, float(v), now, int(s)) for k, v, s in metrics]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def metric_history(self, run_id: str) -> list[tuple[str, float, int]]:
        """Every (key, value, step) logged on run `run_id`."""
        return [(m.key, m.value, m.step) for key in self.client.get_run(run_id).data.metrics
                for m in self.client.get_metric_history(run_id, key)]

    def histories(self, run_ids: list[str], keys: list[str]) -> dict[str, dict[str, list[float]]]:
        """run id -> metric key -> its values by step (the last value logged at a step), for the
        metrics `keys` of the runs `run_ids`: one query on a database store, else a call per run
        and key."""
        rows = database.metric_rows(self.uri, list(run_ids), list(keys)) if run_ids else []
        if rows is None:
            rows = [(r, k, m.step, m.value) for r in run_ids for k in keys
                    for m in sorted(self.client.get_metric_history(r, k), key=lambda m: m.timestamp)]
        steps: dict[str, dict[str, dict[int, float]]] = {}
        for run_id, key, step, value in rows:
            steps.setdefault(run_id, {}).setdefault(key, {})[int(step)] = float(value)
        return {r: {k: [v[s] for s in sorted(v)] for k, v in by_key.items()} for r, by_key in steps.items()}

    def log_dict(self, run_id: str, obj: Any, path: str) -> None:
        self.client.log_dict(run_id, obj, path)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_plot(self, run_id: str, draw: Any, args: tuple, path: str) -> None:
        """Log the figure `draw(*args)` (a module-level function of `plots`, so it can travel to the
        tracking process and be drawn there, off the training path)."""
        self.client.log_figure(run_id, draw(*args), path)

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
        db = sqlite_path(self.uri)
        return db is None or db.exists()

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

    def done_jobs(self, jobs: list[str] | set[str] | None = None) -> dict[str, str]:
        """job hash -> run id of a computed FINISHED run of it, anywhere in the store. On a database
        store one query reads just the two tags (whole runs, with all their params, cost ~10 ms
        each to load); on others, one search."""
        wanted = None if jobs is None else set(jobs)
        light = self._done_jobs_sql()
        if light is None:
            light = {j: r.info.run_id for j, r in self._finished_job_runs().items()}
        return {j: r for j, r in light.items() if wanted is None or j in wanted}

    def _done_jobs_sql(self) -> dict[str, str] | None:
        rows = database.done_job_rows(self.uri)
        if rows is None:
            return None
        out: dict[str, str] = {}
        for value, run_id in rows:
            out.setdefault(value, run_id)
        return out

    def _finished_job_runs(self) -> dict[str, Any]:
        flt = f"attributes.status = '{FINISHED}' and tags.`{TAG}origin` = 'computed'"
        found = {}
        for run in self.search(flt):
            job = run.data.tags.get(TAG + "job")
            if job:
                found.setdefault(job, run)
        return found

    def finished_jobs(self, jobs: list[str] | None = None) -> dict[str, Any]:
        """job hash -> its computed FINISHED run (the original, not a reuse record). Only the runs
        asked for are loaded (by run id, 100 to a search)."""
        wanted = None if jobs is None else set(jobs)
        ids = self._done_jobs_sql()
        if ids is None:  # not a database store: one search of everything finished
            return {j: r for j, r in self._finished_job_runs().items() if wanted is None or j in wanted}
        ids = {j: r for j, r in ids.items() if wanted is None or j in wanted}
        if not ids:
            return {}
        by_id = {}
        run_ids = sorted(set(ids.values()))
        for i in range(0, len(run_ids), 100):
            chunk = ", ".join(f"'{r}'" for r in run_ids[i:i + 100])
            by_id.update({run.info.run_id: run for run in self.search(f"attributes.run_id IN ({chunk})")})
        return {j: by_id[r] for j, r in ids.items() if r in by_id}

    def run_rows(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Every lmcsweep run (of `sweep`) as {run_id, status, start_time, sweep, kind, job, trial,
        study}, oldest first: one query on the SQLite file, else one search."""
        keys = database.ROW_TAGS
        rows = database.run_rows(self.uri)
        if rows is not None:
            out = [dict(zip(("run_id", "status", "start_time", *keys), row)) for row in rows]
            return [r for r in out if r["sweep"] and (sweep is None or r["sweep"] == sweep)]
        runs = self.search(f"tags.`{TAG}sweep` = '{sweep}'" if sweep else f"tags.`{TAG}sweep` != ''")
        out = [{"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time,
                **{k: r.data.tags.get(TAG + k) for k in keys}} for r in runs]
        return sorted(out, key=lambda r: r["start_time"] or 0)

    def sweep_experiments(self) -> dict[str, str]:
        """sweep name -> the id of its experiment (where its sweep run is)."""
        rows = database.sweep_rows(self.uri)
        if rows is None:
            rows = [(tag(r, "sweep"), r.info.experiment_id) for r in self.search(f"tags.`{TAG}kind` = 'sweep'")]
        return {sweep: experiment for sweep, experiment in rows}

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

    def download_json(self, run_id: str, path: str) -> Any:
        local = self.client.download_artifacts(run_id, path)
        return json.loads(Path(local).read_text())
