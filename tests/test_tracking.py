"""The tracking process (`TrackingProcess`) and new stores made from the cached empty store, on
real SQLite stores."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lmcsweep.tracking import FAILED, FINISHED, TAG, Tracker, TrackingProcess
from lmcsweep.tracking.database import template_path as _template


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_queries_see_every_write_sent_before_them(tmp_path, cache):
    tracker = TrackingProcess(root=tmp_path / "store")
    try:
        exp = tracker.experiment("e")
        parent = tracker.start(exp, "parent", "sweep", {"sweep": "s"})
        child = tracker.start(exp, "child", "branch", {"sweep": "s", "job": "abc", "origin": "computed"},
                              parent=parent)
        tracker.log_metrics(child, [("loss", float(i), i) for i in range(2500)])  # 3 batches
        tracker.log_params(child, {"lr": 0.1})
        tracker.finish(child, FINISHED)
        history = tracker.metric_history(child)  # a query: waits for the writes before it
        assert sorted(s for _, _, s in history) == list(range(2500))
        run = tracker.run(child)
        assert run.info.status == FINISHED and run.data.params == {"lr": "0.1"}
        assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags[TAG + "kind"] == "branch"
        assert tracker.done_jobs() == {"abc": child}  # read by SQL on the file, after the finish
        assert tracker.write_errors() == {}
    finally:
        assert tracker.close() == {}
    # what it wrote is in the store, read with MLflow directly
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert client.get_run(child).info.status == FINISHED


def test_a_failed_write_fails_its_run_and_is_reported(tmp_path, cache):
    tracker = TrackingProcess(root=tmp_path / "store")
    try:
        exp = tracker.experiment("e")
        run = tracker.start(exp, "r", "branch", {"sweep": "s"})
        tracker.log_params(run, {"lr": 0.1})
        tracker.log_params(run, {"lr": 0.2})  # MLflow refuses to change a param: fails in the helper
        tracker.finish(run, FINISHED)
        errors = tracker.write_errors()
        assert list(errors) == [run] and errors[run].startswith("log_params:")
        stored = tracker.run(run)
        assert stored.info.status == FAILED
        assert stored.data.tags[TAG + "error"].startswith("tracking: log_params:")
        with pytest.raises(Exception, match="(?i)run"):  # a query's error comes back to the caller
            tracker.run("0" * 32)
    finally:
        tracker.close()


def test_answers_do_not_import_mlflow(tmp_path, cache):
    """The point of the helper: `lmcsweep run`'s own process never imports mlflow, even reading runs."""
    code = (
        "import sys\n"
        "from lmcsweep.tracking import TrackingProcess\n"
        f"t = TrackingProcess(root={str(tmp_path / 'store')!r})\n"
        "exp = t.experiment('e')\n"
        "run = t.start(exp, 'r', 'sweep', {'sweep': 's'})\n"
        "t.log_metrics(run, [('m', 1.0, 0)])\n"
        "[found] = t.runs_of_sweep('s')\n"
        "assert found.info.run_id == run and found.data.metrics == {'m': 1.0}, found\n"
        "t.close()\n"
        "print('mlflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_only_its_own_process_may_call_it(tmp_path, cache):
    tracker = TrackingProcess(root=tmp_path / "store")
    try:
        exp = tracker.experiment("e")
        pid = os.fork()
        if pid == 0:
            try:
                tracker.start(exp, "from a fork", "sweep", {})
                os._exit(1)
            except RuntimeError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert tracker.runs_of_sweep("") == [] and tracker.search("attributes.run_name = 'from a fork'") == []
    finally:
        tracker.close()


def test_new_stores_are_copies_of_the_cached_empty_store(tmp_path, cache):
    first = Tracker(root=tmp_path / "a")
    first.experiment("e")
    template = _template()
    assert template is not None and template.parent == cache / "lmcsweep" and template.exists()
    with sqlite3.connect(template) as db:  # only MLflow's schema and its Default experiment
        assert db.execute("SELECT experiment_id, name FROM experiments").fetchall() == [(0, "Default")]
        assert db.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)

    second = Tracker(root=tmp_path / "b")
    exp = second.experiment("e")
    run = second.start(exp, "r", "sweep", {"sweep": "s"})
    second.finish(run)
    assert second.run(run).info.status == FINISHED
    default = second.client.get_experiment("0")
    assert default.artifact_location == f"{(tmp_path / 'b').resolve().as_uri()}/artifacts/0"
    with sqlite3.connect(tmp_path / "b" / "mlflow.db") as b, sqlite3.connect(tmp_path / "a" / "mlflow.db") as a:
        version = "SELECT version_num FROM alembic_version"
        assert b.execute(version).fetchall() == a.execute(version).fetchall()


def test_a_job_whose_tracking_failed_counts_as_failed(tmp_path, cache):
    """The runner's side: at the end of a sweep, a job whose run had a failed write leaves
    `computed` for `failed` (and `lmcsweep run` lists it and exits 1)."""
    from lmcsweep.store import Store
    from lmcsweep.run.scheduler import Outcome, Runner
    from lmcsweep.sweep import tracking_failures

    tracker = TrackingProcess(root=tmp_path / "store")
    try:
        runner = Runner(tracker, Store(tmp_path / "store"), progress=False)
        exp = tracker.experiment("e")
        good, bad = (tracker.start(exp, name, "branch", {"sweep": "s"}) for name in ("good", "bad"))
        runner.computed_runs.update({good: "job-good", bad: "job-bad"})
        outcome = Outcome(computed=["job-good", "job-bad"])
        tracker.log_params(bad, {"lr": 1})
        tracker.log_params(bad, {"lr": 2})
        for run in (good, bad):
            tracker.finish(run, FINISHED)
        tracking_failures(tracker, runner, outcome)
        assert outcome.computed == ["job-good"]
        assert list(outcome.failed) == ["job-bad"] and outcome.failed["job-bad"].startswith("log_params:")
        assert tracker.run(good).info.status == FINISHED and tracker.run(bad).info.status == FAILED
    finally:
        tracker.close()
