"""`lmcsweep ui` as a user meets it: a tiny finished sweep, the UI started on a free port, its runs
page rendered in headless Chromium (Debian's `chromium`, installed by scripts/install.sh)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lmcsweep.tracking import Tracker
from lmcsweep.tracking.ui import runs_url

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _render(url: str, tmp: Path) -> str:
    out = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp}",
                          "--window-size=1600,1000", "--virtual-time-budget=20000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    return out.stdout


def _check_what_the_ui_shows(store: Path) -> None:
    """The experiment's kind, the runs' place as params, the summaries and the curve against alpha."""
    client = Tracker(root=store).client
    exp = client.get_experiment_by_name("tests")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    inter = runs["interpolate rep 0 k=20 copies 0-1"]
    assert {"replicate": "0", "rewind": "20", "pair": "0-1"}.items() <= inter.data.params.items()
    curve = client.get_metric_history(inter.info.run_id, "error_test_vs_alpha")
    assert [m.step for m in curve] == [0, 250, 500, 750, 1000]  # alpha 0, 0.25, ... 1, times 1000
    assert [m.value for m in curve] == [m.value for m in client.get_metric_history(inter.info.run_id, "error_test")]
    pairs = {k: runs[f"interpolate rep 0 k={k} copies 0-1"].data.metrics["instability_test"] for k in (0, 20)}
    for name in ("train rep 0", "small"):  # one replicate: its mean is the sweep's
        history = client.get_metric_history(runs[name].info.run_id, "mean_instability_test")
        assert {m.step: m.value for m in history} == pairs, name
    assert {m.step for m in client.get_metric_history(runs["small"].info.run_id, "stable_fraction_train")} == {0, 20}


def test_ui_lists_the_sweeps_runs_by_name(cli, write_sweep, store, tmp_path):
    assert shutil.which("chromium"), "Debian's chromium is missing: scripts/install.sh installs it"
    assert cli("run", "--no-progress", write_sweep()).exit_code == 0
    _check_what_the_ui_shows(store)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    ui = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "ui", "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = []
        for line in ui.stdout:
            lines.append(line)
            if line.strip().startswith("sweep small:"):
                break
        seconds = time.monotonic() - started
        assert [line for line in lines if line.startswith(f"MLflow UI ready: http://127.0.0.1:{port}")], lines
        url = lines[-1].split(": ", 1)[1].strip()
        assert url == runs_url(f"http://127.0.0.1:{port}", "1", "small")  # the sweep's experiment, "tests"
        dom = _render(url, tmp_path / "chromium")
        # every run of the sweep is a row, named by what it is
        names = ["small", "train rep 0", "branch rep 0 k=0 copy 0", "branch rep 0 k=20 copy 1",
                 "interpolate rep 0 k=0 copies 0-1", "interpolate rep 0 k=20 copies 0-1"]
        missing = [n for n in names if f">{n}<" not in dom]
        assert not missing, f"runs not listed: {missing} (page of {len(dom)} characters)"
        assert "<strong>8</strong> matching runs" in dom  # flat: none folded under its parent
        # the model-training runs view (its side bar's current page), not MLflow's GenAI overview
        assert 'aria-current="page" ' in dom and f'href="#/experiments/1/runs?workflowType=machine_learning"' in dom
        current = dom.split('aria-current="page"', 1)[1].split(">", 1)[0]
        assert 'href="#/experiments/1/runs?workflowType=machine_learning"' in current, current
        assert "Overview" not in dom and "Detect Issues" not in dom and "Run Name" in dom
        print(f"UI ready after {seconds:.1f} s")
    finally:
        ui.send_signal(signal.SIGTERM)  # the ui command stops its server on the way out
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ui.kill()
            ui.wait()
        ui.stdout.close()
    assert ui.returncode == 130
    with socket.socket() as s:  # the server is gone with it
        assert s.connect_ex(("127.0.0.1", port)) != 0
