"""docker/: the images cannot be pulled here, so what can run does, outside a container: every
service's command is a role of the entrypoint, the driver and worker roles plan and run a sweep,
and the server role starts MLflow's tracking server with basic auth from secret files."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from services import free_port

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent
SWEEP = """\
name: boxed
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 300, subset_test: 200}
train: {iterations: 20it, batch_size: 60, eval_every: 10it, checkpoint_every: 10it, model: {hidden: [16]}}
replicates: 1
instability: {rewind: [0it], copies: 2, alphas: 3, train_examples: 200}
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "LMCSWEEP": str(BIN / "lmcsweep"), "MLFLOW": str(BIN / "mlflow"), **extra}


def test_every_service_runs_a_role_of_the_entrypoint():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    roles = {s["command"][0] for s in compose["services"].values() if "command" in s}
    assert roles == {"server", "driver", "worker"}
    text = ENTRYPOINT.read_text()
    assert all(f"{role})" in text for role in roles)
    assert all(Path(ROOT / "docker" / s["file"]).name for s in compose["secrets"].values())
    for service in compose["services"].values():   # no credential written in the file itself
        env = service.get("environment", {})
        assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in dockerfile and "entrypoint.sh" in dockerfile
    bad = subprocess.run(["bash", str(ENTRYPOINT), "nonsense"], env=_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown role" in bad.stderr


def test_driver_then_worker_roles_run_a_sweep(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP)
    env = _env(LMCSWEEP_STORE=str(tmp_path / "store"))
    driver = subprocess.run(["bash", str(ENTRYPOINT), "driver", str(sweep)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert driver.returncode == 0 and "planned" in driver.stdout, driver.stderr
    worker = subprocess.run(["bash", str(ENTRYPOINT), "worker", "--lease", "120"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert worker.returncode == 0 and "4 jobs done, 0 failed" in worker.stdout, worker.stdout + worker.stderr


def test_server_role_asks_for_the_credentials_of_its_secret_files(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "user").write_text("lmc")
    (secrets / "password").write_text("s3cret-pass-123")
    (secrets / "key").write_text("k" * 32)
    port = free_port()
    env = _env(LMCSWEEP_STORE=str(tmp_path / "store"), LMCSWEEP_PORT=str(port), LMCSWEEP_SERVER_WORKERS="1",
               LMCSWEEP_TRACKING_DB=f"sqlite:///{tmp_path / 'mlflow.db'}",
               LMCSWEEP_AUTH_DB=f"sqlite:///{tmp_path / 'auth.db'}",
               MLFLOW_TRACKING_USERNAME_FILE=str(secrets / "user"),
               MLFLOW_TRACKING_PASSWORD_FILE=str(secrets / "password"),
               MLFLOW_FLASK_SERVER_SECRET_KEY_FILE=str(secrets / "key"))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        env.pop(name, None)
    server = subprocess.Popen(["bash", str(ENTRYPOINT), "server"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"

    def get(auth: str | None) -> int:
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"} if auth else {})
        try:
            return urllib.request.urlopen(request, timeout=60).status
        except urllib.error.HTTPError as exc:
            return exc.code
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                code = get(None)
                break
            except OSError:
                assert time.time() < deadline, "the tracking server did not answer"
                time.sleep(0.5)
        assert code == 401                                            # nobody gets in without logging in
        good = base64.b64encode(b"lmc:s3cret-pass-123").decode()
        assert get(good) == 200
        assert get(base64.b64encode(b"lmc:wrong").decode()) == 401
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log = server.stdout.read().decode()
    assert "s3cret-pass-123" not in log
