"""`lmcsweep status` reads the runs and the runners' locks as one snapshot."""

from __future__ import annotations

from contextlib import ExitStack

from lmcsweep.records.status import sweep_status
from lmcsweep.store import Store
from lmcsweep.tracking import Tracker


class FinishesWhileRead(Tracker):
    """A store whose sweep finishes (its run FINISHED, its lock released) right after its runs were
    read once: the moment `status` once called INTERRUPTED for a sweep that was running."""

    def __init__(self, *args, release, sweep_run: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.release, self.sweep_run, self.reads = release, sweep_run, 0

    def run_rows(self, sweep=None):
        rows = super().run_rows(sweep)
        self.reads += 1
        if self.reads == 1:
            self.client.set_terminated(self.sweep_run, "FINISHED")
            self.release()
        return rows


def test_a_sweep_that_finishes_while_status_reads_is_not_interrupted(cli, write_sweep, store):
    assert cli("run", "--plan-only", write_sweep()).exit_code == 0  # a sweep run, no training
    plain = Tracker(None, store)
    (sweep_run,) = [r["run_id"] for r in plain.run_rows("small") if r["kind"] == "sweep"]
    plain.client.update_run(sweep_run, status="RUNNING")
    with ExitStack() as held:  # a runner holds the sweep's lock, as `lmcsweep run` does
        held.enter_context(Store(store).sweep_lock("small"))
        assert sweep_status(Tracker(None, store), store)[0]["status"] == "RUNNING"
        tracker = FinishesWhileRead(None, store, release=held.close, sweep_run=sweep_run)
        (row,) = sweep_status(tracker, store)
    assert (row["status"], row["runner"]) == ("FINISHED", "none"), row  # once: INTERRUPTED
    assert tracker.reads == 2
