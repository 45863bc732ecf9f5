"""The executor interface: what the scheduler hands over (`Task`) and what it learns back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from ...plan.specs import Job
from ..bodies import KINDS
from ..context import Context


@dataclass
class Task:
    """One job to run: its plan's context, the job (its spec) and the MLflow run to record it in
    (made by the scheduler, which nests it in its tree)."""

    ctx: Context
    job: Job
    run_id: str

    def __call__(self) -> None:
        """Run the job's body (`bodies.KINDS`), reporting its start and end (`Context.report`: the
        progress display's line for it is printed as it ends, not when its group does)."""
        self.ctx.report("start", self.job.hash)
        started = time.perf_counter()
        try:
            KINDS[self.job.kind].body(self.ctx, self.job, self.run_id)
        except Exception as exc:
            self.ctx.report("end", self.job.hash, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
            raise
        self.ctx.report("end", self.job.hash, time.perf_counter() - started, None)


class Executor(Protocol):
    """Runs tasks and says how each ended.

    `run(tasks)` runs every task's body once, in any order or side by side, and returns {job hash:
    exception} for the tasks that failed (a task's failure is its own: the others go on). When it
    returns, each finished task's files are in the store and its MLflow writes are sent (its
    context's writer flushed); the scheduler then marks the runs FINISHED or FAILED."""

    name: str

    def run(self, tasks: list[Task]) -> dict[str, BaseException]: ...


def flush(tasks: list[Task], failed: dict[str, BaseException]) -> dict[str, BaseException]:
    """Wait for the writes of every task's context; a context whose writes failed fails its tasks
    (those not failed already). Returns `failed`, updated."""
    for ctx in {id(t.ctx): t.ctx for t in tasks}.values():
        try:
            ctx.writer.flush()
        except Exception as exc:  # noqa: BLE001 -- params, metrics or checkpoints could not be written
            failed.update({t.job.hash: exc for t in tasks if t.ctx is ctx and t.job.hash not in failed})
    return failed
