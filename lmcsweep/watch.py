"""The driver's view of a sweep on workers (`lmcsweep run --workers N`): it polls the job queue and
shows what a one-process run shows (`run.progress`): the jobs running now, by run name, with the
worker running each; networks, interpolations and prunes done of their totals; the time left from
measured throughput; on a pipe or with `--no-progress` a line per job as it ends (with its worker
and time); and at the end the same `Outcome` a one-process run gives, read from the queue's rows
(computed, reused from where, already done, failed, blocked, and what was left in the queue).

The workers record in the queue when each job's last attempt was claimed and ended and how it
ended (`Queue.complete`); the driver reads those rows, never the workers' MLflow runs.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from .plan.graph import Plan, summary
from .queue import CLAIMED, DONE, FAILED, Queue
from .run.bodies import KINDS
from .run.progress import Costs, Progress
from .run.scheduler import Outcome

BLOCKED = "a parent failed"  # how the queue marks the jobs below a failed one (`Queue._block`)


def worker_label(owner: str | None) -> str:
    """``worker 4312`` for a worker of this host, ``worker node7:4312`` for another's."""
    if not owner:
        return "a worker"
    host, _, pid = owner.rpartition(":")
    return f"worker {pid if host == socket.gethostname() else owner}"


class QueueProgress(Progress):
    """`Progress` fed from the queue's rows: what runs now is shown with its worker; the time left
    comes from the worker-seconds measured per job (a group of networks a worker trained together
    counts once), spread over the `workers` running."""

    def __init__(self, *args: Any, workers: int = 1, **kw: Any):
        self.workers, self.where = max(1, workers), {}      # job hash -> its worker, while it runs
        self.groups: dict[tuple, float] = {}                # (worker, claimed at) -> seconds it trained
        self.iterations_trained = 0
        super().__init__(*args, **kw)

    def now_running(self, where: dict[str, str]) -> None:
        with self.lock:
            self.running, self.where = list(where), where
            self._show()

    def trained(self, group: tuple, seconds: float, iterations: int) -> None:
        with self.lock:
            self.groups[group] = seconds
            self.iterations_trained += iterations

    def rates(self) -> Costs:
        """The machine's seconds per unit of work: a worker's, measured, over the workers (the
        store's `prior` until this run has measured a kind of work)."""
        seconds, n = sum(self.groups.values()), self.workers
        iteration = seconds / self.iterations_trained / n if self.iterations_trained and seconds > 2.0 else None
        interpolate = sum(self.interpolations) / len(self.interpolations) / n if self.interpolations else None
        prune = sum(self.prunes) / len(self.prunes) / n if self.prunes else None
        return Costs(iteration or self.prior.iteration, interpolate or self.prior.interpolate, prune or self.prior.prune)

    def describe(self) -> str:
        """``many: branch rep 0 k=20 copy 0 (worker 4312) +3 on 2 workers``."""
        running = [h for h in self.running if h in self.jobs]
        if not running:
            return f"{self.label}: -"
        busy = len({self.where[h] for h in running})
        more = f" +{len(running) - 1} on {busy} worker{'s' if busy > 1 else ''}" if len(running) > 1 else ""
        return f"{self.label}: {self.jobs[running[0]].name} ({self.where[running[0]]}){more}"


class Watch:
    """The jobs of one batch of plans (a sweep's, or trials asked together) in the queue, polled
    while the workers run (`poll`) and read once they are done (`settle`). `more(trials watched)`,
    when given, returns the plans of trials queued since (a random/tpe search's, asked by the
    workers): they join the watch at the next poll."""

    def __init__(self, queue: Queue, sweep: str, plans: list[Plan], more: Callable[[set], list[Plan]] | None = None):
        self.queue, self.sweep, self.more = queue, sweep, more
        self.jobs: dict[tuple, Any] = {}
        self.trials: set[int | None] = set()
        self.order: dict[tuple, int] = {}  # parents first
        self.before: dict[tuple, dict[str, Any]] = {}  # what was done before a plan joined: "already done"
        self.seen: dict[tuple, tuple] = {}
        self.progress: QueueProgress | None = None
        self.next_poll, self.every = 0.0, 0.0
        self.add(plans)
        self.since = time.time()  # a plan that joins later: only what was done before now is "already done"

    def add(self, plans: list[Plan]) -> None:
        new = {(p.trial, j.hash): j for p in plans for j in p.jobs if (p.trial, j.hash) not in self.jobs}
        if not new:
            return
        self.jobs.update(new)
        self.trials |= {p.trial for p in plans}
        self.order.update({key: len(self.order) + i for i, key in enumerate(new)})
        rows = self.queue.rows(self.sweep, {p.trial for p in plans})
        since = getattr(self, "since", None)
        self.before.update({k: r for k, r in rows.items() if k in new and (
            since is None or (r["state"] == DONE and (r["ended"] is None or r["ended"] < since)))})
        if self.progress is not None:
            done = self.done_before()
            left = {h: j for (_, h), j in new.items() if h not in done}
            self.progress.more(list(left.values()), summary(plans, done)["iterations_remaining"])

    def done_before(self) -> set[str]:
        return {h for (t, h), r in self.before.items() if r["state"] == DONE}

    def _rows(self) -> dict[tuple, dict[str, Any]]:
        rows = self.queue.rows(self.sweep, self.trials)
        return {k: r for k, r in rows.items() if k in self.jobs}

    def poll(self) -> None:
        """Tell the display what changed since the last poll (a big queue is read less often: at
        most a fifth of the time goes to reading it)."""
        if self.progress is None or time.monotonic() < self.next_poll:
            return
        began = time.monotonic()
        if self.more is not None:
            self.add(self.more(self.trials))
        rows, now, where, changed = self._rows(), time.time(), {}, []
        for key, r in rows.items():
            job, state = self.jobs[key], r["state"]
            if state == CLAIMED and (r["lease_until"] or 0) >= now:
                where[job.hash] = worker_label(r["owner"])
            if state not in (DONE, FAILED) or (state, r["ended"]) == self.seen.get(key) \
                    or self.before.get(key, {}).get("state") == DONE:
                continue
            self.seen[key] = (state, r["ended"])
            changed.append((r["ended"] or 0.0, self.order[key], key))
        for *_, key in sorted(changed):  # in the order they ended
            self._ended(self.jobs[key], rows[key])
        self.progress.now_running(where)
        self.every = min(30.0, 4 * (time.monotonic() - began))
        self.next_poll = time.monotonic() + self.every

    def _ended(self, job: Any, r: dict[str, Any]) -> None:
        seconds = r["ended"] - r["started"] if r["ended"] and r["started"] else None
        who = worker_label(r["owner"])
        if r["state"] == DONE:
            how = r["how"] or "computed"
            if how == "computed":
                if KINDS[job.kind].trains:
                    self.progress.trained((r["owner"], r["started"]), seconds or 0.0, job.iterations)
                    self.progress.advance(job.iterations)
                self.progress.ended(job.hash, "computed", seconds, f"on {who}")
            elif how.startswith("reused"):
                self.progress.ended(job.hash, "reused", None, f"{how.removeprefix('reused ')}, on {who}")
            else:
                self.progress.ended(job.hash, "done", None, "(finished by an earlier attempt)")
        elif r["state"] == FAILED:
            errors = json.loads(r["errors"] or "[]")
            if errors and errors[-1].startswith(BLOCKED):
                self.progress.ended(job.hash, "blocked", None, "a job it needs failed")
            else:
                self.progress.ended(job.hash, "failed", seconds, f"on {who}: {(errors or ['?'])[-1][:200]}")

    def settle(self, outcome: Outcome) -> None:
        """How each job of the batch ended, into `outcome` as a one-process run records it."""
        rows = self._rows()
        for key, job in self.jobs.items():
            h, trial = job.hash, key[0]
            outcome.names.setdefault(h, job.name + (f" (trial {trial})" if trial is not None else ""))
            r, before = rows.get(key), self.before.get(key)
            if r is None:
                continue
            how = r["how"] or "computed"
            if (before and before["state"] == DONE) or (r["state"] == DONE and how == "done before"):
                outcome.skipped.append(h)
            elif r["state"] == DONE and how.startswith("reused from "):
                outcome.reused.append(h)
                outcome.reused_from[h] = how.removeprefix("reused from ")
            elif r["state"] == DONE:
                outcome.computed.append(h)
            elif r["state"] == FAILED:
                errors = json.loads(r["errors"] or "[]")
                if errors and errors[-1].startswith(BLOCKED):
                    outcome.blocked.append(h)
                else:
                    outcome.failed[h] = " | ".join(errors)
            else:
                outcome.left.append(h)
