"""Read-only fast paths over the tracking store's database, and new SQLite stores made from a
cached empty one. Nothing here imports mlflow: `lmcsweep plan` and `status` answer from the SQLite
file without it (importing mlflow takes seconds).

The queries are plain SQL over MLflow's schema (tables runs, tags, experiments): on the embedded
SQLite file through `sqlite3`, on another database (postgresql://, mysql://, mssql://) through
SQLAlchemy's public `create_engine` + `text` with the same SQL text. MLflow offers no public API
that reads only a few tags of many runs: its `search_runs` loads whole runs (~10 ms each with
their params), which is what the fast paths avoid.
"""

from __future__ import annotations

import functools
import os
from contextlib import closing
from pathlib import Path

from ..store import sqlite_path
from .names import FINISHED, TAG

# the URI schemes of MLflow's database stores (SQLAlchemy dialects, with an optional "+driver")
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")

DONE_JOBS = (f"SELECT t.value, r.run_uuid FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
             f"JOIN tags o ON o.run_uuid = t.run_uuid AND o.key = '{TAG}origin' AND o.value = 'computed' "
             f"JOIN experiments e ON e.experiment_id = r.experiment_id "
             f"WHERE t.key = '{TAG}job' AND r.status = '{FINISHED}' AND r.lifecycle_stage = 'active' "
             f"AND e.lifecycle_stage = 'active' ORDER BY r.start_time")

ROW_TAGS = ("sweep", "kind", "job", "trial", "study")
_cols = ", ".join(f"MAX(CASE WHEN t.key = '{TAG}{k}' THEN t.value END)" for k in ROW_TAGS)
RUN_ROWS = (f"SELECT r.run_uuid, r.status, r.start_time, {_cols} FROM runs r "
            f"JOIN tags t ON t.run_uuid = r.run_uuid JOIN experiments e ON e.experiment_id = r.experiment_id "
            f"WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active' "
            f"AND t.key IN ({', '.join(repr(TAG + k) for k in ROW_TAGS)}) GROUP BY r.run_uuid ORDER BY r.start_time")
del _cols

SWEEP_RUNS = (f"SELECT s.value, r.experiment_id FROM runs r "
              f"JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = '{TAG}kind' AND k.value = 'sweep' "
              f"JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = '{TAG}sweep' "
              f"JOIN experiments e ON e.experiment_id = r.experiment_id "
              f"WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active' ORDER BY r.start_time")


def default_uri(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


# -- queries -------------------------------------------------------------------------------------
def sqlite_rows(uri: str, query: str) -> list[tuple] | None:
    """Rows of a read-only query on the embedded SQLite file of `uri` (MLflow's schema: runs, tags,
    experiments); [] when the file was never made; None when the store is elsewhere or differs."""
    import sqlite3

    path = sqlite_path(uri)
    if path is None:
        return None
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(query).fetchall()
    except sqlite3.Error:
        return None


@functools.lru_cache(maxsize=4)
def _engine(uri: str):
    from sqlalchemy import create_engine

    return create_engine(uri)


def database_rows(uri: str, query: str) -> list[tuple] | None:
    """Rows of a read-only query on the database of a non-SQLite database store (postgresql://,
    mysql://, ...) through SQLAlchemy; None for any other store (a tracking server: search it)."""
    if sqlite_path(uri) is not None or uri.split("://", 1)[0].split("+", 1)[0] not in DATABASES:
        return None
    try:
        from sqlalchemy import text

        with _engine(uri).connect() as connection:
            return [tuple(row) for row in connection.execute(text(query)).all()]
    except Exception:  # noqa: BLE001 -- no driver, no server, another schema: the caller searches
        return None


def done_job_rows(uri: str) -> list[tuple[str, str]] | None:
    """(job hash, run id) of every computed FINISHED run of an active experiment, oldest first;
    None when the store is not a database we can read (search it instead)."""
    rows = sqlite_rows(uri, DONE_JOBS)
    return rows if rows is not None else database_rows(uri, DONE_JOBS)


def sweep_rows(uri: str) -> list[tuple] | None:
    """(sweep name, experiment id) of every sweep run, oldest first; None for other stores."""
    return sqlite_rows(uri, SWEEP_RUNS)


def metric_rows(uri: str, run_ids: list[str], keys: list[str]) -> list[tuple] | None:
    """(run id, key, step, value) of every logged value of the metrics `keys` of the runs `run_ids`,
    in the order they were logged (a value logged again at a step comes later); None for a store
    that is not a database we can read (use `get_metric_history`)."""
    names = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
    rows: list[tuple] = []
    for i in range(0, len(run_ids), 500):
        ids = ", ".join("'" + r.replace("'", "''") + "'" for r in run_ids[i:i + 500])
        query = (f"SELECT run_uuid, key, step, value FROM metrics WHERE key IN ({names}) AND run_uuid IN ({ids}) "
                 f"ORDER BY timestamp")
        part = sqlite_rows(uri, query)
        part = part if part is not None else database_rows(uri, query)
        if part is None:
            return None
        rows += part
    return rows


def run_rows(uri: str) -> list[tuple] | None:
    """(run id, status, start time, *ROW_TAGS) of every active run with an lmcsweep tag, oldest
    first, from the SQLite file; None for other stores."""
    return sqlite_rows(uri, RUN_ROWS)


# -- the empty-store template ----------------------------------------------------------------------
def template_path() -> Path | None:
    """Where an empty store of this MLflow version is kept, to be copied for new stores: making
    MLflow's schema (its migrations) takes ~1.5 s, copying the file milliseconds."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("mlflow")
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmcsweep"
    except (importlib.metadata.PackageNotFoundError, RuntimeError, KeyError):  # no mlflow, no home
        return None
    return cache / f"mlflow-{version}-empty.db"


def seed_from_template(db: Path, artifact_root: str) -> bool:
    """Make the new SQLite store `db` a copy of the cached empty store (its Default experiment's
    artifacts under `artifact_root`); False when there is no template or `db` exists meanwhile."""
    import sqlite3

    template = template_path()
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


def save_template(db: Path) -> None:
    """Keep a copy of the store `db`, whose schema MLflow has just made, as the template."""
    import sqlite3

    template = template_path()
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


def check_database(uri: str) -> None:
    """SQLite's own check of the store's database (`PRAGMA quick_check`: every page and index;
    ~0.1 s for a small store): raises sqlite3.DatabaseError ("database disk image is malformed")
    where a damaged page would otherwise go unnoticed until some query reads it. Nothing for a
    store that is not SQLite or has no database yet."""
    import sqlite3

    db = sqlite_path(uri)
    if db is None or not db.exists():
        return
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        found = [row[0] for row in con.execute("PRAGMA quick_check")]
    if found != ["ok"]:
        raise sqlite3.DatabaseError(f"database disk image is malformed: {found[0].splitlines()[-1]}")
