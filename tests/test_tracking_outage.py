"""A tracking server (a real `mlflow server`) that goes away while a worker runs: back within the
retry window, the worker waits and finishes every job; away longer, the worker stops with one line,
its jobs go back to the queue unfinished, and a worker run once the server is back completes them
with exactly one FINISHED run per job and whole metric curves."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lmcsweep.queue import Queue, default_uri
from lmcsweep.tracking import Tracker

SWEEP = """\
name: {name}
experiment: tests
preset: lenet
data: {{dataset: fashion_mnist, subset_train: {subset}, subset_test: 300}}
train: {{iterations: 200it, batch_size: 60, eval_every: 50it, checkpoint_every: 20it, model: {{hidden: [64]}}}}
replicates: 2
"""


def _cli(store: Path, uri: str, *args, retry: float) -> list[str]:
    return [sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "--tracking-uri", uri,
            "--tracking-retry", str(retry), *map(str, args)]


def _wait_mid_training(store: Path, worker: subprocess.Popen) -> None:
    deadline = time.time() + 180
    while not list((store / "checkpoints").glob("train_*/resume.pt")):
        assert time.time() < deadline and worker.poll() is None, worker.communicate()
        time.sleep(0.05)


def _finished(uri: str, store: Path, sweep: str) -> dict[str, object]:
    """job hash -> its computed FINISHED run (each must be one)."""
    runs = [r for r in Tracker(uri, store).runs_of_sweep(sweep, status="FINISHED")
            if r.data.tags.get("lmcsweep.origin") == "computed"]
    jobs = [r.data.tags["lmcsweep.job"] for r in runs]
    assert len(jobs) == len(set(jobs)), sorted(jobs)
    return dict(zip(jobs, runs))


def test_a_tracking_server_that_goes_away(tmp_path):
    from services import free_port, mlflow_server

    seeded = Tracker(root=tmp_path / "server")
    seeded.client  # a new SQLite store, copied from the cached empty one: the server has no schema to make
    port, backend, artifacts = free_port(), seeded.uri, tmp_path / "artifacts"
    store = tmp_path / "store"
    queue = Queue(default_uri(store))
    for name, subset in (("short", 600), ("long", 540)):  # (other data: other jobs)
        (tmp_path / f"{name}.yaml").write_text(SWEEP.format(name=name, subset=subset))
    with mlflow_server(backend, artifacts, port) as uri:
        out = subprocess.run(_cli(store, uri, "run", "--plan-only", tmp_path / "short.yaml", tmp_path / "long.yaml",
                                  retry=60), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        jobs = queue.counts("short")["waiting"]
        # 1. away for a few seconds, within the 90 s window: the worker waits, no job fails
        worker = subprocess.Popen(_cli(store, uri, "worker", "--sweep", "short", retry=90),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_mid_training(store, worker)
    time.sleep(3)
    with mlflow_server(backend, artifacts, port) as uri:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, (out, err, queue.failures("short"))  # (a failed job: why, from the queue)
        assert queue.counts("short") == {"done": jobs}
        assert queue.failures("short") == {}
        short = _finished(uri, store, "short")
        assert len(short) == jobs
        # 2. away longer than the 4 s window: one line, the job back in the queue, nothing FINISHED
        worker = subprocess.Popen(_cli(store, uri, "worker", "--sweep", "long", retry=4),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_mid_training(store, worker)
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: tracking server {uri} did not answer"), err
    assert "Connection refused" in err and "run the same command again" in err and "Traceback" not in err
    assert queue.counts("long").get("done", 0) == 0 and queue.counts("long").get("claimed", 0) == 0
    with mlflow_server(backend, artifacts, port) as uri:
        again = subprocess.run(_cli(store, uri, "worker", "--sweep", "long", retry=60),
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert queue.counts("long") == {"done": jobs}
        long = _finished(uri, store, "long")
        assert len(long) == jobs
        tracker = Tracker(uri, store)
        assert [r.info.status for r in tracker.runs_of_sweep("long", kind="train")].count("KILLED") >= 1
        for name, runs in (("short", short), ("long", long)):  # whole curves: every eval step, in every run
            for job, run in runs.items():
                if run.data.tags["lmcsweep.kind"] == "train":
                    steps = sorted({s for k, v, s in tracker.metric_history(run.info.run_id) if k.startswith("test")})
                    assert steps[-1] == 200 and len(steps) >= 4, (name, job, steps)


def test_no_server_at_all_waits_the_window_then_fails_at_once(tmp_path, monkeypatch):
    import pytest

    from lmcsweep.tracking import TrackingUnavailable
    from services import free_port

    monkeypatch.setenv("LMCSWEEP_TRACKING_RETRY", "2")
    uri = f"http://127.0.0.1:{free_port()}"            # nothing listens there
    tracker = Tracker(uri, tmp_path)
    tracker.client                                       # (mlflow imported: not part of the time)
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"did not answer for 2 s .*Connection refused\): start it again"):
        tracker.experiment("tests")
    assert 2 <= time.monotonic() - start < 10          # tried again for the window, not MLflow's ~4 minutes
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable):
        tracker.run("0" * 32)
    assert time.monotonic() - start < 1                # then every call fails at once
    assert tracker.unavailable().startswith(f"tracking server {uri} did not answer")


def test_a_server_never_reached_is_said_once_and_no_password_is_shown(tmp_path, monkeypatch, capfd):
    """A server that has not answered since the command began (a wrong address): after a few seconds
    one line says it is being waited for (nobody waits the window in silence), then the error; the
    password in its address is shown as *** in both."""
    import pytest

    from lmcsweep.tracking import TrackingUnavailable
    from lmcsweep.tracking.patience import NOTICE_AFTER
    from services import free_port

    monkeypatch.setenv("LMCSWEEP_TRACKING_RETRY", str(NOTICE_AFTER + 3))
    uri = f"http://lab:S3CRET-pw@127.0.0.1:{free_port()}"
    tracker = Tracker(uri, tmp_path)
    with pytest.raises(TrackingUnavailable) as down:
        tracker.experiment("tests")
    shown = uri.replace("S3CRET-pw", "***")
    assert str(down.value).startswith(f"tracking server {shown} did not answer for 8 s")
    err = capfd.readouterr().err
    assert err.splitlines() == [f"tracking server {shown} does not answer (Connection refused); trying again for up "
                                "to 8 s (--tracking-retry, LMCSWEEP_TRACKING_RETRY)"], err
    assert "S3CRET" not in str(down.value) + err


def test_a_gateway_answering_502_is_waited_out_like_a_server_away(tmp_path, monkeypatch):
    """A proxy in front of the server (or a server shutting down) that answers 502 with a page of
    its own, not MLflow's JSON: tried again for the window, then the one line; not a job failed at
    the first answer."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest

    from lmcsweep.tracking import TrackingUnavailable

    class Gateway(BaseHTTPRequestHandler):
        def _bad(self):
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>502 Bad Gateway</html>")

        do_GET = do_POST = _bad

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("LMCSWEEP_TRACKING_RETRY", "2")
    try:
        tracker = Tracker(f"http://127.0.0.1:{server.server_port}", tmp_path)
        tracker.client
        start = time.monotonic()
        with pytest.raises(TrackingUnavailable, match=r"did not answer for 2 s "):
            tracker.experiment("tests")
        assert time.monotonic() - start >= 2
    finally:
        server.shutdown()
