"""The job queue: one row per job of a planned sweep, beside the runs, claimed by workers with a
lease they renew.

SQLite in the store (``<store>/queue.db``) on one machine, any SQLAlchemy database (PostgreSQL) for
a cluster; one code path. A claim is one transaction: SQLite's ``BEGIN IMMEDIATE`` (one writer at
a time), PostgreSQL's ``FOR UPDATE SKIP LOCKED`` (workers skip the rows others are claiming). A job
is ready when every parent is done; a claimed job whose lease expired (its worker was killed, its
node lost) is ready again and resumes from its checkpoint; a job is completed only by the worker
that holds its lease; after `max_attempts` claims it is FAILED with every attempt's error. A job
whose hash another row (another sweep, trial) has claimed waits, so no job is computed twice.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import sqlalchemy as sa

from .owners import gone
from .store import sqlite_path
from .uris import shown

WAITING, CLAIMED, DONE, FAILED = "waiting", "claimed", "done", "failed"
LEASE_SECONDS = 60.0
MAX_ATTEMPTS = 3

_meta = sa.MetaData()
JOBS = sa.Table(
    "jobs", _meta,
    sa.Column("sweep", sa.String(200), primary_key=True),
    sa.Column("trial", sa.Integer, primary_key=True),          # -1: no trial
    sa.Column("hash", sa.String(64), primary_key=True, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),          # its place in the plan (parents first)
    sa.Column("state", sa.String(10), nullable=False, index=True),
    sa.Column("owner", sa.String(200)),                         # the worker holding its lease
    sa.Column("lease_until", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("errors", sa.Text, nullable=False, default="[]"),  # JSON: every attempt's error
    # (added later: `Queue.upgrade` adds them to an older queue) when its last attempt was claimed
    # and ended, and how it ended: "computed", "reused from ...", "done before"
    sa.Column("started", sa.Float),
    sa.Column("ended", sa.Float),
    sa.Column("how", sa.Text),
    sa.Index("jobs_ready", "state", "position"),
)
ADDED = ("started", "ended", "how")
EDGES = sa.Table(
    "edges", _meta,
    sa.Column("sweep", sa.String(200), primary_key=True),
    sa.Column("trial", sa.Integer, primary_key=True),
    sa.Column("child", sa.String(64), primary_key=True),
    sa.Column("parent", sa.String(64), primary_key=True),
)
WORKERS = sa.Table(
    "workers", _meta,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
    sa.Column("running", sa.Text, nullable=False, default="[]"),  # JSON: job hashes it holds now
    sa.Column("done", sa.Integer, nullable=False, default=0),
)
# A random/tpe search's trials, asked by workers (`slots`): a row per search (how many trials it
# may still ask, how many are asked) and a row per trial slot (its Optuna trial and its state).
SEARCHES = sa.Table(
    "searches", _meta,
    sa.Column("sweep", sa.String(200), primary_key=True),
    sa.Column("target", sa.Integer, nullable=False),      # trials to ask in this run of the search
    sa.Column("asked", sa.Integer, nullable=False),       # slots taken so far (never above target)
    sa.Column("spec", sa.Text, nullable=False),           # JSON: sweep, study, storage, experiment, sweep run
)
SLOTS = sa.Table(
    "trial_slots", _meta,
    sa.Column("sweep", sa.String(200), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True),
    sa.Column("trial", sa.Integer),                       # its Optuna trial number, once asked
    sa.Column("run_id", sa.String(64)),                   # the trial's MLflow run
    sa.Column("state", sa.String(10), nullable=False),    # asking, queued, telling, told
    sa.Column("owner", sa.String(200)),
    sa.Column("lease_until", sa.Float),
)


class QueueError(RuntimeError):
    """The queue's database cannot be reached or used."""


def default_uri(store_root) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(store_root, 'queue.db'))}"


def _trial(trial: int | None) -> int:
    return -1 if trial is None else trial


class Queue:
    """The jobs of planned sweeps and the workers that run them."""

    def __init__(self, uri: str, lease: float = LEASE_SECONDS, max_attempts: int = MAX_ATTEMPTS):
        self.uri, self.lease, self.max_attempts = uri, lease, max_attempts
        path = sqlite_path(uri)
        self.sqlite = path is not None
        if path is not None:
            # autocommit at the driver, so that `BEGIN IMMEDIATE` opens each write transaction itself
            self.engine = sa.create_engine(uri, connect_args={"timeout": 60, "isolation_level": None})
        else:
            try:
                self.engine = sa.create_engine(uri, pool_pre_ping=True)
            except (ImportError, sa.exc.ArgumentError) as exc:
                raise QueueError(f"job queue {uri} cannot be used: {exc} (a PostgreSQL queue takes "
                                 "postgresql+psycopg://USER@HOST:PORT/DB)") from None

    def create(self) -> None:
        """Make the tables (once, before any worker starts: concurrent first creation can clash)."""
        path = sqlite_path(self.uri)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.transaction() as conn:
                _meta.create_all(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise QueueError(f"job queue {shown(self.uri)}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
        self.upgrade()

    def upgrade(self) -> None:
        """Add the tables and columns (`ADDED`) a queue made by an earlier version lacks. The driver
        does it before any worker starts (`create`); a worker does it for a queue an earlier version
        planned: SQLite's write transaction serialises it; on PostgreSQL ``IF NOT EXISTS`` makes the
        columns idempotent (two workers making a missing table at once: one stops with one line)."""
        try:
            with self.transaction() as conn:
                inspector = sa.inspect(conn)
                for table in _meta.sorted_tables:  # (trial slots came later than the jobs)
                    if not inspector.has_table(table.name):
                        table.create(conn)
                have = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
                for name in ADDED:
                    if name not in have:
                        kind = JOBS.c[name].type.compile(dialect=conn.dialect)
                        guard = "" if self.sqlite else "IF NOT EXISTS "
                        conn.exec_driver_sql(f"ALTER TABLE jobs ADD COLUMN {guard}{name} {kind}")
        except sa.exc.SQLAlchemyError as exc:
            raise QueueError(f"job queue {shown(self.uri)}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None

    def exists(self) -> bool:
        """Whether the queue's tables are there (a driver has planned a sweep into it)."""
        path = sqlite_path(self.uri)
        if path is not None and not path.exists():
            return False  # (connecting would make the file)
        try:
            return sa.inspect(self.engine).has_table("jobs")
        except sa.exc.SQLAlchemyError as exc:
            raise QueueError(f"job queue {shown(self.uri)} cannot be read: {str(exc).splitlines()[0]}") from None

    def transaction(self):
        """A write transaction: BEGIN IMMEDIATE on SQLite (claims are serialised), a plain one elsewhere."""
        queue = self

        class _Tx:
            def __enter__(self):
                self.conn = queue.engine.connect()
                if queue.sqlite:
                    self.conn.exec_driver_sql("BEGIN IMMEDIATE")
                    return self.conn
                self.tx = self.conn.begin()
                return self.conn

            def __exit__(self, kind, value, tb):
                try:
                    if queue.sqlite:
                        self.conn.exec_driver_sql("ROLLBACK" if kind else "COMMIT")
                    elif kind:
                        self.tx.rollback()
                    else:
                        self.tx.commit()
                finally:
                    self.conn.close()
        return _Tx()

    # -- the driver ------------------------------------------------------------------------
    def enqueue(self, sweep: str, trial: int | None, jobs: list[dict[str, Any]], done: set[str],
                also=None) -> int:
        """Put the jobs of a plan (`Job.to_dict()` rows, parents first) in the queue, those in
        `done` as done; rows already there keep their state; `also(conn)` in the same transaction.
        Returns how many rows were added."""
        t = _trial(trial)
        with self.transaction() as conn:
            have = {r.hash for r in conn.execute(sa.select(JOBS.c.hash).where(
                JOBS.c.sweep == sweep, JOBS.c.trial == t))}
            rows = [{"sweep": sweep, "trial": t, "hash": j["hash"], "kind": j["kind"], "position": i,
                     "state": DONE if j["hash"] in done else WAITING, "attempts": 0, "errors": "[]"}
                    for i, j in enumerate(jobs) if j["hash"] not in have]
            if rows:
                conn.execute(JOBS.insert(), rows)
                edges = [{"sweep": sweep, "trial": t, "child": j["hash"], "parent": p}
                         for j in jobs if j["hash"] not in have for p in j["parents"]]
                if edges:  # (an empty list would insert one row of defaults)
                    conn.execute(EDGES.insert(), edges)
            conn.execute(JOBS.update().where(JOBS.c.sweep == sweep, JOBS.c.trial == t,
                                             JOBS.c.hash.in_(list(done)), JOBS.c.state != DONE)
                         .values(state=DONE, owner=None, lease_until=None))
            if also is not None:
                also(conn)
        return len(rows)

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        q = sa.select(JOBS.c.state, sa.func.count()).group_by(JOBS.c.state)
        if sweep is not None:
            q = q.where(JOBS.c.sweep == sweep)
        with self.engine.connect() as conn:
            return {state: n for state, n in conn.execute(q)}

    # -- a worker --------------------------------------------------------------------------
    def claim(self, owner: str, limit: int = 1, sweep: str | None = None) -> list[dict[str, Any]]:
        """Claim up to `limit` ready jobs of one kind (the first ready job's), parents first, with a
        lease of `self.lease` seconds; each claim counts as an attempt. Returns their rows."""
        now = time.time()
        parent = EDGES.alias("e")
        other = JOBS.alias("o")
        blocked = sa.exists().where(
            parent.c.sweep == JOBS.c.sweep, parent.c.trial == JOBS.c.trial, parent.c.child == JOBS.c.hash,
            ~sa.exists().where(other.c.sweep == JOBS.c.sweep, other.c.trial == JOBS.c.trial,
                               other.c.hash == parent.c.parent, other.c.state == DONE))
        busy = sa.exists().where(other.c.hash == JOBS.c.hash, other.c.state == CLAIMED,  # computed elsewhere now
                                 other.c.lease_until >= now,
                                 sa.or_(other.c.sweep != JOBS.c.sweep, other.c.trial != JOBS.c.trial))
        n = max(1, limit) * 4
        # Expired claims first, then waiting jobs: two queries, each walking the (state, position)
        # index in order, so a claim reads a few rows whatever the queue's size (one query with
        # `WAITING OR expired` read and sorted every waiting row: 290 ms at 66,000, docs/cluster.md).
        queries = [sa.select(JOBS).where(JOBS.c.state == CLAIMED, JOBS.c.lease_until < now, ~blocked, ~busy),
                   sa.select(JOBS).where(JOBS.c.state == WAITING, ~blocked, ~busy)]
        with self.transaction() as conn:
            rows = []
            for query in queries:
                if sweep is not None:
                    query = query.where(JOBS.c.sweep == sweep)
                query = query.order_by(JOBS.c.position, JOBS.c.sweep, JOBS.c.trial).limit(n - len(rows))
                rows += [dict(r._mapping) for r in conn.execute(query.with_for_update(skip_locked=True))]
                if len(rows) >= n:
                    break
            if not rows:
                return []
            kind = rows[0]["kind"]
            rows = [r for r in rows if r["kind"] == kind][:limit]
            for r in rows:
                errors = json.loads(r["errors"])
                if r["state"] == CLAIMED:  # its worker's lease expired: that attempt failed
                    errors.append(f"attempt {r['attempts']}: lease of {r['owner']} expired")
                state = CLAIMED if r["attempts"] < self.max_attempts else FAILED
                conn.execute(JOBS.update().where(*self._key(r)).values(
                    state=state, owner=owner if state == CLAIMED else None, lease_until=now + self.lease,
                    attempts=r["attempts"] + (state == CLAIMED), errors=json.dumps(errors), started=now, ended=None))
                r.update(state=state, errors=errors, attempts=r["attempts"] + (state == CLAIMED))
                if state == FAILED:
                    self._block(conn, r)
            return [r for r in rows if r["state"] == CLAIMED]

    def renew(self, owner: str, rows: list[dict[str, Any]]) -> bool:
        """Extend the leases `owner` holds on `rows`; False if it lost any of them."""
        with self.transaction() as conn:
            held = 0
            for r in rows:
                held += conn.execute(JOBS.update().where(*self._key(r), JOBS.c.owner == owner,
                                                         JOBS.c.state == CLAIMED)
                                     .values(lease_until=time.time() + self.lease)).rowcount
            conn.execute(WORKERS.update().where(WORKERS.c.name == owner).values(heartbeat=time.time()))
        return held == len(rows)

    def complete(self, owner: str, row: dict[str, Any], error: str | None = None, how: str = "computed") -> bool:
        """Done (or, with `error`, back to waiting, or FAILED after the last attempt) — only while
        `owner` holds the lease. False when it no longer does (another worker has the job). `how`
        it was done ("computed", "reused from ..."); the row keeps `owner`, the worker that ended it."""
        with self.transaction() as conn:
            current = conn.execute(sa.select(JOBS).where(*self._key(row))).first()
            if current is None or current.owner != owner or current.state != CLAIMED:
                return False
            if error is None:
                values = {"state": DONE, "lease_until": None, "ended": time.time(), "how": how}
            else:
                errors = json.loads(current.errors) + [f"attempt {current.attempts}: {error}"]
                last = current.attempts >= self.max_attempts
                values = {"state": FAILED if last else WAITING, "owner": owner if last else None,
                          "lease_until": None, "errors": json.dumps(errors), "ended": time.time(), "how": None}
            conn.execute(JOBS.update().where(*self._key(row)).values(**values))
            if values["state"] == FAILED:
                self._block(conn, row)
            conn.execute(WORKERS.update().where(WORKERS.c.name == owner).values(done=WORKERS.c.done + int(error is None)))
            return True

    def release(self, owner: str, rows: list[dict[str, Any]], why: str) -> None:
        """`owner`'s claims on `rows` go back to waiting at once, not counted as an attempt (the
        worker could not record them: `why`, kept with the job's errors)."""
        with self.transaction() as conn:
            for r in rows:
                current = conn.execute(sa.select(JOBS).where(*self._key(r))).first()
                if current is None or current.owner != owner or current.state != CLAIMED:
                    continue
                errors = json.loads(current.errors) + [f"attempt {current.attempts}: released: {why}"]
                conn.execute(JOBS.update().where(*self._key(r)).values(
                    state=WAITING, owner=None, lease_until=None, attempts=current.attempts - 1,
                    errors=json.dumps(errors)))

    def register(self, owner: str) -> None:
        with self.transaction() as conn:
            conn.execute(WORKERS.delete().where(WORKERS.c.name == owner))
            conn.execute(WORKERS.insert().values(name=owner, started=time.time(), heartbeat=time.time(),
                                                 running="[]", done=0))

    def unregister(self, owner: str) -> None:
        """A worker that stops cleanly leaves the list (one that dies stays, its heartbeat ageing)."""
        with self.transaction() as conn:
            conn.execute(WORKERS.delete().where(WORKERS.c.name == owner))

    def running(self, owner: str, hashes: list[str]) -> None:
        with self.transaction() as conn:
            conn.execute(WORKERS.update().where(WORKERS.c.name == owner).values(
                running=json.dumps(hashes), heartbeat=time.time()))

    def workers(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(WORKERS).order_by(WORKERS.c.started))]

    def failures(self, sweep: str) -> dict[str, list[str]]:
        with self.engine.connect() as conn:
            return {r.hash: json.loads(r.errors) for r in conn.execute(
                sa.select(JOBS.c.hash, JOBS.c.errors).where(JOBS.c.sweep == sweep, JOBS.c.state == FAILED))}

    def rows(self, sweep: str, trials: set[int | None] | None = None) -> dict[tuple[int | None, str], dict[str, Any]]:
        """The jobs of `sweep` (of `trials` when given) as the driver watches them: (trial, hash) ->
        state, owner (the worker holding it, or that ended it), started, ended, how, lease_until, errors."""
        c = JOBS.c
        q = sa.select(c.trial, c.hash, c.state, c.owner, c.started, c.ended, c.how, c.lease_until, c.errors) \
            .where(c.sweep == sweep)
        if trials is not None:
            q = q.where(c.trial.in_([_trial(t) for t in trials]))
        with self.engine.connect() as conn:
            return {(None if r.trial < 0 else r.trial, r.hash): dict(r._mapping) for r in conn.execute(q)}

    def open_work(self, sweep: str | None = None) -> int:
        """Jobs not done nor failed (a worker stops when there are none)."""
        q = sa.select(sa.func.count()).where(JOBS.c.state.in_([WAITING, CLAIMED]))
        if sweep is not None:
            q = q.where(JOBS.c.sweep == sweep)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar_one()

    def open_sweeps(self) -> list[str]:
        """The sweeps that have jobs not done nor failed."""
        with self.engine.connect() as conn:
            return sorted(conn.execute(sa.select(JOBS.c.sweep).distinct()
                                       .where(JOBS.c.state.in_([WAITING, CLAIMED]))).scalars())

    def _block(self, conn, row: dict[str, Any]) -> None:
        """Every job below a FAILED one fails too (it could never become ready)."""
        todo = [row["hash"]]
        while todo:
            children = [c for (c,) in conn.execute(sa.select(EDGES.c.child).where(
                EDGES.c.sweep == row["sweep"], EDGES.c.trial == row["trial"], EDGES.c.parent.in_(todo)))]
            if children:
                conn.execute(JOBS.update().where(JOBS.c.sweep == row["sweep"], JOBS.c.trial == row["trial"],
                                                 JOBS.c.hash.in_(children), JOBS.c.state == WAITING)
                             .values(state=FAILED, errors=json.dumps([f"a parent failed: {row['hash']}"]),
                                         ended=time.time()))
            todo = children

    def release_dead(self, sweep: str) -> int:
        """Claims of `sweep` held by workers of this host that are no longer alive go back to
        waiting at once (not when their leases expire): a driver starting again after a kill."""
        with self.transaction() as conn:
            rows = conn.execute(sa.select(JOBS.c.hash, JOBS.c.trial, JOBS.c.owner).where(
                JOBS.c.sweep == sweep, JOBS.c.state == CLAIMED)).all()
            dead = [r for r in rows if gone(r.owner)]
            for r in dead:
                conn.execute(JOBS.update().where(JOBS.c.sweep == sweep, JOBS.c.trial == r.trial, JOBS.c.hash == r.hash)
                             .values(state=WAITING, owner=None, lease_until=None))
        return len(dead)

    @staticmethod
    def _key(row: dict[str, Any]):
        return JOBS.c.sweep == row["sweep"], JOBS.c.trial == row["trial"], JOBS.c.hash == row["hash"]
