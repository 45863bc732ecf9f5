"""MLflow: the run tree, its tags, lookups by job hash, and the query records read back from it.

The only module that imports mlflow. Runs are created through `MlflowClient` with an explicit
parent run id (tag ``mlflow.parentRunId``), never through the fluent active-run stack, so jobs can
run in other processes and on other machines. `lmcsweep run` uses the same `Tracker` through
`TrackingProcess`, which serves it from a helper process (its own never imports mlflow).

Default store: SQLite at ``<root>/mlflow.db`` with artifacts under ``<root>/artifacts/``, both by
absolute URI (MLflow 3 refuses the old ``./mlruns`` file store).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("alembic").setLevel(logging.ERROR)

# mlflow itself is imported where it is first used: importing it takes seconds, and `lmcsweep plan`
# answers from the SQLite file without it.

TAG = "lmcsweep."
KINDS = ("sweep", "trial", "train", "branch", "interpolate", "level")
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


def default_uri(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _template() -> Path | None:
    """Where an empty store of this MLflow version is kept, to be copied for new stores: making
    MLflow's schema (its migrations) takes ~1.5 s, copying the file milliseconds."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("mlflow")
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmcsweep"
    except (importlib.metadata.PackageNotFoundError, RuntimeError, KeyError):  # no mlflow, no home
        return None
    return cache / f"mlflow-{version}-empty.db"


def _seed_from_template(db: Path, artifact_root: str) -> bool:
    """Make the new SQLite store `db` a copy of the cached empty store (its Default experiment's
    artifacts under `artifact_root`); False when there is no template or `db` exists meanwhile."""
    import sqlite3

    template = _template()
    if template is None or not template.exists():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
            with dst:  # one transaction, committed
                dst.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                            (f"{artifact_root}/0",))
        os.link(tmp, db)  # never over a store made meanwhile
        return True
    except (OSError, sqlite3.Error):
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _save_template(db: Path) -> None:
    """Keep a copy of the store `db`, whose schema MLflow has just made, as the template."""
    import sqlite3

    template = _template()
    if template is None or template.exists():
        return
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        os.replace(tmp, template)
    except (OSError, sqlite3.Error):  # no cache then: the next new store makes its schema too
        tmp.unlink(missing_ok=True)


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
            db = _sqlite_path(self.uri)
            new = db is not None and not db.exists() and not _seed_from_template(db, self.artifact_root)
            if new:
                db.parent.mkdir(parents=True, exist_ok=True)
            from mlflow.tracking import MlflowClient

            logging.getLogger("mlflow").setLevel(logging.ERROR)  # importing mlflow set it to INFO
            self._client = MlflowClient(tracking_uri=self.uri)
            if new:
                self._client.search_experiments(max_results=1)  # makes the schema
                _save_template(db)
        return self._client

    def write_errors(self) -> dict[str, str]:
        """run id -> the first write that failed on it. Writes here raise at once, so always empty;
        `TrackingProcess` writes in the background and reports them here."""
        return {}

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
        db = _sqlite_path(self.uri)
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
        query = (f"SELECT t.value, r.run_uuid FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                 f"JOIN tags o ON o.run_uuid = t.run_uuid AND o.key = '{TAG}origin' AND o.value = 'computed' "
                 f"JOIN experiments e ON e.experiment_id = r.experiment_id "
                 f"WHERE t.key = '{TAG}job' AND r.status = '{FINISHED}' AND r.lifecycle_stage = 'active' "
                 f"AND e.lifecycle_stage = 'active' ORDER BY r.start_time")
        rows = self._sqlite(query)
        if rows is None:
            rows = self._sqlalchemy_done_rows()
        if rows is None:
            return None
        out: dict[str, str] = {}
        for value, run_id in rows:
            out.setdefault(value, run_id)
        return out

    def _sqlite(self, query: str) -> list[tuple] | None:
        """Rows of a read-only query on the embedded SQLite file (MLflow's schema: runs, tags,
        experiments), without importing mlflow; None when the store is elsewhere or differs."""
        import sqlite3

        path = _sqlite_path(self.uri)
        if path is None:
            return None
        if not path.exists():
            return []
        try:
            with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30) as db:
                return db.execute(query).fetchall()
        except sqlite3.Error:
            return None

    def _sqlalchemy_done_rows(self) -> list[tuple] | None:
        try:
            from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun, SqlTag
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
            from sqlalchemy import and_, select
            from sqlalchemy.orm import aliased

            store = self.client._tracking_client.store
            if not isinstance(store, SqlAlchemyStore):
                return None
            job, origin = aliased(SqlTag), aliased(SqlTag)
            query = (select(job.value, SqlRun.run_uuid)
                     .join(SqlRun, SqlRun.run_uuid == job.run_uuid)
                     .join(origin, and_(origin.run_uuid == job.run_uuid, origin.key == TAG + "origin",
                                        origin.value == "computed"))
                     .join(SqlExperiment, SqlExperiment.experiment_id == SqlRun.experiment_id)
                     .where(job.key == TAG + "job", SqlRun.status == FINISHED, SqlRun.lifecycle_stage == "active",
                            SqlExperiment.lifecycle_stage == "active")
                     .order_by(SqlRun.start_time))
            with store.ManagedSessionMaker() as session:
                return [tuple(row) for row in session.execute(query).all()]
        except Exception:  # noqa: BLE001 -- MLflow internals moved: fall back to the public search
            return None

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
        keys = ("sweep", "kind", "job", "trial", "study")
        cols = ", ".join(f"MAX(CASE WHEN t.key = '{TAG}{k}' THEN t.value END)" for k in keys)
        query = (f"SELECT r.run_uuid, r.status, r.start_time, {cols} FROM runs r "
                 f"JOIN tags t ON t.run_uuid = r.run_uuid JOIN experiments e ON e.experiment_id = r.experiment_id "
                 f"WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active' "
                 f"AND t.key IN ({', '.join(repr(TAG + k) for k in keys)}) GROUP BY r.run_uuid ORDER BY r.start_time")
        rows = self._sqlite(query)
        if rows is not None:
            out = [dict(zip(("run_id", "status", "start_time", *keys), row)) for row in rows]
            return [r for r in out if r["sweep"] and (sweep is None or r["sweep"] == sweep)]
        runs = self.search(f"tags.`{TAG}sweep` = '{sweep}'" if sweep else f"tags.`{TAG}sweep` != ''")
        out = [{"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time,
                **{k: r.data.tags.get(TAG + k) for k in keys}} for r in runs]
        return sorted(out, key=lambda r: r["start_time"] or 0)

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


# -- the tracking process ---------------------------------------------------------------------
WRITES = frozenset({"log_params", "set_tags", "log_metrics", "log_dict", "log_text", "log_plot",
                    "log_artifact", "finish", "reopen"})


class TrackingProcessError(RuntimeError):
    """The tracking process is gone (killed, out of memory): what it had not written is lost."""


class TrackingProcess(Tracker):
    """The same `Tracker`, served by a helper process that owns the MLflow connection, so that
    `lmcsweep run` never imports mlflow (~1 s) nor waits for its database writes.

    The helper starts at once: it imports mlflow and opens (or makes) the store while this process
    imports torch and plans. Calls go to it in order over a pipe; writes (`WRITES`) return at once,
    queries wait for their answer and so see every write sent before them. A write that fails
    makes its run's later ``finish(FINISHED)`` a FAILED with an error tag, and is reported by
    `write_errors()`, which also waits for every write sent so far. The helper dies with this
    process (`children.die_with_parent`), like the writer thread it replaces. Only the process
    that made it may call it (a forked copy worker sends its calls to its parent instead).
    """

    def __init__(self, uri: str | None = None, root: str | Path = "mlruns"):
        import threading

        super().__init__(uri, root)
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from lmcsweep.tracking import serve; serve()", self.uri, str(self.root),
             str(requests_r), str(answers_w), str(os.getpid())], pass_fds=(requests_r, answers_w),
            stdin=subprocess.DEVNULL)
        os.close(requests_r)
        os.close(answers_w)
        self._requests, self._answers = os.fdopen(requests_w, "wb"), os.fdopen(answers_r, "rb")
        self._lock = threading.Lock()
        self._owner = os.getpid()

    @property
    def client(self):
        raise RuntimeError("the MLflow client lives in the tracking process: call a Tracker method")

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        import pickle

        if os.getpid() != self._owner:
            raise RuntimeError(f"Tracker.{name} called from a forked process: send it to the parent")
        with self._lock:
            if self._proc.poll() is not None:
                raise TrackingProcessError(f"the tracking process exited (status {self._proc.returncode})")
            try:
                pickle.dump((name, args, kwargs), self._requests, protocol=pickle.HIGHEST_PROTOCOL)
                self._requests.flush()
                if name in WRITES:
                    return None
                size = self._answers.read(8)
                data = self._answers.read(int.from_bytes(size, "little")) if len(size) == 8 else b""
                if not data:
                    raise EOFError
            except (BrokenPipeError, EOFError) as exc:
                raise TrackingProcessError(f"the tracking process died (status {self._proc.wait()})") from exc
        ok, value = pickle.loads(data)  # whole: a failure here cannot leave the pipe half-read
        if not ok:
            raise value
        return value

    def close(self) -> dict[str, str]:
        """Wait for every write, stop the helper; returns `write_errors()` (nothing if the helper
        is gone already: the call that found it gone raised)."""
        try:
            return self.write_errors() if self._proc.poll() is None else {}
        finally:
            with self._lock:
                self._requests.close()
                self._proc.wait()
                self._answers.close()


def _forward(name: str):
    def call(self: TrackingProcess, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(Tracker, name).__doc__
    return call


for _name, _member in list(vars(Tracker).items()):  # every public method but the local file check
    if callable(_member) and not _name.startswith("_") and _name != "exists":
        setattr(TrackingProcess, _name, _forward(_name))
del _name, _member


def _portable(value: Any) -> Any:
    """`value` with mlflow's Run objects made plain namespaces (run.info.run_id, status,
    experiment_id, start_time, ...; run.data.tags, params, metrics), so that reading an answer of
    the tracking process does not import mlflow (a second)."""
    from types import SimpleNamespace

    from mlflow.entities import Run

    if isinstance(value, Run):
        i = value.info
        info = {k: getattr(i, k) for k in ("run_id", "run_name", "status", "experiment_id", "start_time",
                                           "end_time", "artifact_uri", "lifecycle_stage")}
        return SimpleNamespace(info=SimpleNamespace(**info), data=SimpleNamespace(
            tags=dict(value.data.tags), params=dict(value.data.params), metrics=dict(value.data.metrics)))
    if isinstance(value, (list, tuple)):
        return type(value)(_portable(v) for v in value)
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    return value


def serve() -> None:
    """The tracking process's loop (`TrackingProcess`): argv = uri, store root, request fd, answer
    fd, parent pid. Calls run in the order sent, except that `start` runs before writes still waiting."""
    import collections
    import contextlib
    import pickle
    import queue
    import signal
    import threading

    from .children import die_with_parent

    uri, root, requests_fd, answers_fd, parent = sys.argv[1:6]
    die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run, which then waits for our writes
    tracker = Tracker(uri, root)
    failed: dict[str, str] = {}
    # the slow part, done while the caller imports torch: mlflow and its database store's modules;
    # the store itself is opened by the first call (none for a run that stops early)
    import mlflow.tracking  # noqa: F401

    if not uri.startswith(("http:", "https:", "databricks", "file:")):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read(requests) -> None:  # everything sent is read at once, so a run can be made out of turn
        try:
            while True:
                inbox.put(pickle.load(requests))
        except Exception:  # noqa: BLE001 -- EOF: the caller closed the pipe (or died)
            inbox.put(None)

    with os.fdopen(int(requests_fd), "rb") as requests, os.fdopen(int(answers_fd), "wb") as answers:
        threading.Thread(target=read, args=(requests,), daemon=True).start()
        pending: collections.deque = collections.deque()
        while True:
            if not pending:
                pending.append(inbox.get())
            with contextlib.suppress(queue.Empty):
                while True:
                    pending.append(inbox.get_nowait())
            # `start` (the caller waits for the run id) goes before writes queued for other runs
            first = next((i for i, m in enumerate(pending) if m is not None and m[0] == "start"), 0)
            message = pending[first]
            del pending[first]
            if message is None:  # every call is committed: skip the interpreter's slow teardown
                answers.flush()
                os._exit(0)
            name, args, kwargs = message
            try:
                if name == "write_errors":
                    value = dict(failed)
                elif name == "finish" and args[0] in failed and (args[1:] or [kwargs.get("status", FINISHED)])[0] == FINISHED:
                    tracker.set_tags(args[0], {"error": f"tracking: {failed[args[0]]}"[:5000]})
                    value = tracker.finish(args[0], FAILED)
                else:
                    value = _portable(getattr(tracker, name)(*args, **kwargs))
                ok = True
            except Exception as exc:  # noqa: BLE001 -- a query's error goes back; a write's is kept
                ok, value = False, exc
                if name in WRITES:
                    run_id = args[0] if args else kwargs.get("run_id", "")
                    failed.setdefault(run_id, f"{name}: {type(exc).__name__}: {exc}")
            if name in WRITES:
                continue
            try:
                data = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
                if not ok:  # some exceptions pickle but cannot be rebuilt
                    pickle.loads(data)
            except Exception as exc:  # noqa: BLE001 -- an answer that cannot travel
                data = pickle.dumps((False, RuntimeError(f"{name}: {type(value).__name__}: {value} ({exc})")))
            answers.write(len(data).to_bytes(8, "little") + data)
            answers.flush()


def tag(run: Any, name: str, default: Any = None) -> Any:
    """The value of lmcsweep tag `name` on an MLflow run."""
    return run.data.tags.get(TAG + name, default)
