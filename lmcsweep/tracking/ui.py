"""The MLflow UI on a store: the server's command line, and the address of a sweep's runs.

`mlflow server` with one worker, and without its job-execution consumers (a pool of processes
for GenAI scorers that this project never submits work to): ~16 processes become 2, and the UI
answers once two Python processes have imported mlflow. The URL opens the experiment's training
runs table (``workflowType=machine_learning``: MLflow 3's UI otherwise remembers, and starts in,
its GenAI view) filtered to one sweep's runs, every run a row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from .names import TAG

SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(uri: str, artifact_root: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri,
            "--default-artifact-root", artifact_root, "--host", host, "--port", str(port),
            "--workers", "1", "--uvicorn-opts", "--log-level warning"]


def start_server(uri: str, artifact_root: str, host: str, port: int) -> subprocess.Popen:
    env = {**SERVER_ENV, **os.environ}  # the user's settings win
    return subprocess.Popen(server_command(uri, artifact_root, host, port), env=env)


def base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def runs_url(base: str, experiment_id: str, sweep: str | None = None) -> str:
    """The training-runs table of an experiment, filtered to one sweep's runs when `sweep` is given."""
    query = {"workflowType": "machine_learning"}
    if sweep is not None:
        # sorted by anything but the start time, a filtered table lists every run flat (not folded
        # under its parent). By name, descending, the runs of a kind come together: train (the
        # replicates, with instability vs k), trial, level, interpolate, branch; the chart view
        # shows the first 10 rows, so the summaries are on it
        query.update({"searchFilter": f"tags.`{TAG}sweep` = '{sweep}'", "orderByKey": "tags.`mlflow.runName`",
                      "orderByAsc": "false"})
    return f"{base}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def wait_until_answers(base: str, proc: subprocess.Popen, timeout: float = 180.0) -> bool:
    """Polls the server's /health until it answers (True), the process ends or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def ready_text(base: str, uri: str, sweeps: dict[str, str]) -> str:
    """What `lmcsweep ui` prints once the UI answers: each sweep's runs table (sweep -> experiment id)."""
    lines = [f"MLflow UI ready: {base}  (store {uri}; Ctrl-C stops it)"]
    lines += [f"  sweep {name}: {runs_url(base, experiment, name)}" for name, experiment in sweeps.items()]
    return "\n".join(lines if sweeps else lines + ["  (no sweeps in the store yet)"])


def serve(uri: str, artifact_root: str, host: str, port: int, ready: Callable[[str], None]) -> int:
    """Runs the UI until it ends or Ctrl-C; `ready(base_url)` once it answers. Returns an exit code:
    0 (the server ended), 1 (it never answered), 130 (Ctrl-C or SIGTERM). The server is stopped on
    the way out."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill PID` stops the server too
    server = start_server(uri, artifact_root, host, port)
    try:
        base = base_url(host, port)
        if not wait_until_answers(base, server):
            print(f"the MLflow UI did not start on port {port} (in use? try --port)", file=sys.stderr)
            return 1
        ready(base)
        server.wait()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
