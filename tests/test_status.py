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


def test_status_shows_each_workers_jobs_by_name_and_their_leases(cli, write_sweep, store):
    """The queue's workers: the jobs each holds by name with the seconds left on their leases; a
    worker whose leases have all expired is marked (its jobs are claimed again); a queue that cannot
    be read is one line after the sweeps."""
    import re
    import time

    from lmcsweep.queue import Queue, default_uri

    assert cli("run", "--plan-only", write_sweep(replicates=2)).exit_code == 0
    live, gone = Queue(default_uri(store), lease=60), Queue(default_uri(store), lease=1)
    for name, queue in (("node1:101", live), ("node2:202", gone)):
        queue.register(name)
        rows = queue.claim(name, limit=1)
        queue.running(name, [r["hash"] for r in rows])
    time.sleep(1.5)                                    # node2's lease of 1 s has expired
    out = cli("status")
    assert out.exit_code == 0, out.output
    table = out.output.split("\n\nworker")[1].splitlines()
    assert table[0].split() == ["heartbeat", "done", "running", "(lease", "left)"]
    assert re.fullmatch(r"node1:101 +\d+s +0  train rep 0 \[small\] \(5\ds\)", table[1]), table
    assert re.fullmatch(r"node2:202 +\d+s +0  train rep 1 \[small\] \(expired \ds ago\)  "
                        r"\(its leases expired: gone\? its jobs are claimed again\)", table[2]), table
    bad = cli("status", "--queue-uri", "postgresql+psycopg://lmc@127.0.0.1:1/queue")
    assert bad.exit_code == 2 and bad.output.splitlines()[-1].startswith(
        "error: the workers cannot be shown: job queue postgresql+psycopg://lmc@127.0.0.1:1/queue cannot be read: ")
