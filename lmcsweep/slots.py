"""Trial slots: how workers share the asking and telling of a random/tpe search's trials.

The driver opens a search in the queue (`open_search`: how many trials this run may still ask;
slots an earlier run left in flight go on).
A worker with no ready job takes a slot (`take`): one transaction, under the same locking as a
claim (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``FOR UPDATE`` of the search's row), raises `asked`
by one only while it is below `target`, so however many workers race, no more trials are asked
than the search has room for. The slot holds a lease; its worker asks Optuna, records the trial's
number (`asked`), and queues the trial's jobs in the same transaction that marks the slot
``queued`` (`queued`). A slot whose worker died while asking (lease expired) is taken over by the
next worker that needs work: the trial it had asked is failed as orphaned and a new one asked in
its place. When every job of a queued trial has ended, the first worker to see it moves the slot
to ``telling`` (one UPDATE on the ``queued`` state: only one worker wins) and tells Optuna; a
teller that dies is replaced once its lease expires.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from .owners import gone
from .queue import CLAIMED, FAILED, JOBS, SEARCHES, SLOTS, WAITING, Queue, QueueError

ASKING, QUEUED, TELLING, TOLD = "asking", "queued", "telling", "told"


def in_flight(queue: Queue, sweep: str) -> list[dict[str, Any]]:
    """The slots of `sweep` not told yet (an earlier run's, when the driver starts again)."""
    with queue.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(SLOTS).where(SLOTS.c.sweep == sweep,
                                                                               SLOTS.c.state != TOLD))]


def open_search(queue: Queue, sweep: str, more: int, spec: dict[str, Any]) -> None:
    """(Re)open the search of `sweep` (the driver, holding the sweep lock, before workers start)
    with room for `more` trials to ask. Slots an earlier run left in flight stay as they are: a
    queued trial's jobs stay queued and it is told when they end, under its own number; a slot
    whose asker (teller) died is taken over once its lease expires, at once when it was a worker of
    this host that is gone. Told slots are dropped."""
    with queue.transaction() as conn:
        conn.execute(SLOTS.delete().where(SLOTS.c.sweep == sweep, SLOTS.c.state == TOLD))
        held = conn.execute(sa.select(SLOTS.c.slot, SLOTS.c.owner).where(SLOTS.c.sweep == sweep,
                                                                          SLOTS.c.owner.is_not(None))).all()
        for row in held:
            if gone(row.owner):
                conn.execute(SLOTS.update().where(SLOTS.c.sweep == sweep, SLOTS.c.slot == row.slot).values(lease_until=0.0))
        first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(SLOTS.c.slot) + 1, 0))
                             .where(SLOTS.c.sweep == sweep)).scalar_one()
        conn.execute(SEARCHES.delete().where(SEARCHES.c.sweep == sweep))
        conn.execute(SEARCHES.insert().values(sweep=sweep, target=first + more, asked=first, spec=json.dumps(spec)))


def has_search(queue: Queue, sweep: str | None) -> bool:
    q = sa.select(sa.func.count()).select_from(SEARCHES)
    if sweep is not None:
        q = q.where(SEARCHES.c.sweep == sweep)
    with queue.engine.connect() as conn:
        return conn.execute(q).scalar_one() > 0


def take(queue: Queue, owner: str, sweep: str | None = None) -> dict[str, Any] | None:
    """A slot to ask a trial in: one whose asking worker's lease expired (its `trial`, if set, is
    to be failed), else a new one while its search has room. None when no search has room."""
    now = time.time()
    with queue.transaction() as conn:
        expired = sa.select(SLOTS).where(SLOTS.c.state == ASKING, SLOTS.c.lease_until < now)
        room = sa.select(SEARCHES).where(SEARCHES.c.asked < SEARCHES.c.target)
        if sweep is not None:
            expired, room = expired.where(SLOTS.c.sweep == sweep), room.where(SEARCHES.c.sweep == sweep)
        row = conn.execute(expired.limit(1).with_for_update(skip_locked=True)).first()
        if row is not None:
            won = conn.execute(SLOTS.update().where(SLOTS.c.sweep == row.sweep, SLOTS.c.slot == row.slot,
                                                    SLOTS.c.state == ASKING, SLOTS.c.lease_until < now)
                               .values(owner=owner, lease_until=now + queue.lease)).rowcount
            if won:
                return {**_spec(conn, row.sweep), "slot": row.slot, "trial": row.trial}
        search = conn.execute(room.limit(1).with_for_update()).first()
        if search is None:
            return None
        won = conn.execute(SEARCHES.update().where(SEARCHES.c.sweep == search.sweep,
                                                   SEARCHES.c.asked < SEARCHES.c.target)
                           .values(asked=SEARCHES.c.asked + 1)).rowcount
        if not won:
            return None
        conn.execute(SLOTS.insert().values(sweep=search.sweep, slot=search.asked, state=ASKING, owner=owner,
                                           lease_until=now + queue.lease))
        return {**json.loads(search.spec), "sweep": search.sweep, "slot": search.asked, "trial": None}


class SlotLost(QueueError):
    """The slot's lease expired while its worker was asking: another worker has taken it over."""


def asked(queue: Queue, owner: str, slot: dict[str, Any], trial: int, run_id: str) -> bool:
    """The slot's Optuna trial and MLflow run, recorded right after asking (False: slot lost)."""
    with queue.transaction() as conn:
        return conn.execute(SLOTS.update().where(*_key(slot), SLOTS.c.owner == owner, SLOTS.c.state == ASKING)
                            .values(trial=trial, run_id=run_id, lease_until=time.time() + queue.lease)).rowcount == 1


def queued(slot: dict[str, Any], owner: str):
    """`Queue.enqueue(..., also=queued(slot, owner))`: the slot is ``queued`` in the transaction
    that queues its trial's jobs; `SlotLost` (nothing queued) if another worker took it over."""
    def mark(conn) -> None:
        if not conn.execute(SLOTS.update().where(*_key(slot), SLOTS.c.owner == owner, SLOTS.c.state == ASKING)
                            .values(state=QUEUED, owner=None, lease_until=None)).rowcount:
            raise SlotLost(f"trial slot {slot['slot']} of search {slot['sweep']!r} was taken over")
    return mark


def to_tell(queue: Queue, owner: str, sweep: str | None = None) -> dict[str, Any] | None:
    """A queued trial whose jobs have all ended (or one whose teller's lease expired), now
    ``telling`` for `owner` alone. Its row: sweep, slot, trial, run_id, and the search's spec."""
    now = time.time()
    open_jobs = sa.exists().where(JOBS.c.sweep == SLOTS.c.sweep, JOBS.c.trial == SLOTS.c.trial,
                                  JOBS.c.state.in_([WAITING, CLAIMED]))
    q = sa.select(SLOTS).where(sa.or_(sa.and_(SLOTS.c.state == QUEUED, ~open_jobs),
                                      sa.and_(SLOTS.c.state == TELLING, SLOTS.c.lease_until < now)))
    if sweep is not None:
        q = q.where(SLOTS.c.sweep == sweep)
    with queue.transaction() as conn:
        for row in conn.execute(q.order_by(SLOTS.c.slot).limit(4).with_for_update(skip_locked=True)).all():
            won = conn.execute(SLOTS.update().where(SLOTS.c.sweep == row.sweep, SLOTS.c.slot == row.slot,
                                                    SLOTS.c.state == row.state,
                                                    sa.or_(SLOTS.c.lease_until.is_(None), SLOTS.c.lease_until < now))
                               .values(state=TELLING, owner=owner, lease_until=now + queue.lease)).rowcount
            if won:
                return {**_spec(conn, row.sweep), "slot": row.slot, "trial": row.trial, "run_id": row.run_id}
    return None


def told(queue: Queue, owner: str, slot: dict[str, Any]) -> None:
    with queue.transaction() as conn:
        conn.execute(SLOTS.update().where(*_key(slot), SLOTS.c.owner == owner)
                     .values(state=TOLD, owner=None, lease_until=None))


def trial_failures(queue: Queue, sweep: str, trial: int) -> dict[str, str]:
    """The FAILED jobs of one trial: hash -> every attempt's error."""
    with queue.engine.connect() as conn:
        return {r.hash: " | ".join(json.loads(r.errors)) for r in conn.execute(
            sa.select(JOBS.c.hash, JOBS.c.errors).where(JOBS.c.sweep == sweep, JOBS.c.trial == trial,
                                                        JOBS.c.state == FAILED))}


def open_trials(queue: Queue, sweep: str | None = None) -> int:
    """Trials still to ask or not told yet (a worker stops when there are none and no job is open)."""
    left = sa.select(sa.func.coalesce(sa.func.sum(SEARCHES.c.target - SEARCHES.c.asked), 0))
    untold = sa.select(sa.func.count()).select_from(SLOTS).where(SLOTS.c.state != TOLD)
    if sweep is not None:
        left, untold = left.where(SEARCHES.c.sweep == sweep), untold.where(SLOTS.c.sweep == sweep)
    with queue.engine.connect() as conn:
        return int(conn.execute(left).scalar_one()) + conn.execute(untold).scalar_one()


def slots_of(queue: Queue, sweep: str) -> list[dict[str, Any]]:
    with queue.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(SLOTS).where(SLOTS.c.sweep == sweep)
                                                       .order_by(SLOTS.c.slot))]


def _spec(conn, sweep: str) -> dict[str, Any]:
    spec = conn.execute(sa.select(SEARCHES.c.spec).where(SEARCHES.c.sweep == sweep)).scalar_one()
    return {**json.loads(spec), "sweep": sweep}


def _key(slot: dict[str, Any]):
    return SLOTS.c.sweep == slot["sweep"], SLOTS.c.slot == slot["slot"]
