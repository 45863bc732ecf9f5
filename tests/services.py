"""Real services for the tests, on loopback only, each stopped by its PID however the test ends:
PostgreSQL 15 (Debian's `postgresql`), MLflow's tracking server, a one-node SLURM cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not start within {seconds:.0f} s")


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A PostgreSQL server in `folder` (run as user postgres: initdb refuses root); yields the
    base URI `postgresql+psycopg://postgres@127.0.0.1:PORT` (databases made with `create_db`)."""
    if not (PG_BIN / "initdb").exists():
        import pytest

        pytest.skip("PostgreSQL 15 is not installed (scripts/install.sh installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    as_pg = lambda *cmd: subprocess.run(["su", "postgres", "-c", " ".join(map(str, cmd))],  # noqa: E731
                                        check=True, capture_output=True, text=True, timeout=120)
    as_pg(PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres")
    as_pg(PG_BIN / "pg_ctl", "-D", data, "-o", f"'-k {folder} -h 127.0.0.1 -p {port}'", "-l", folder / "log",
          "-w", "start")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)  # smart shutdown
        deadline = time.time() + 30
        while time.time() < deadline and _alive(pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def create_db(base: str, name: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return f"{base}/{name}"


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, port: int | None = None) -> Iterator[str]:
    """`mlflow server` on loopback over `backend` (on `port`, or a free one); yields its http URI."""
    port = port or free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", backend, "--artifacts-destination",
                             str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, "mlflow server exited"
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        except OSError:
            return False
    try:
        _wait(up, "mlflow server", 120)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def slurm_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster (Debian's slurm-wlm 22.05 + munge), every address on loopback and
    every file in `folder`; yields the environment that points the SLURM commands at it."""
    if not shutil.which("slurmctld") or not shutil.which("munged"):
        import pytest

        pytest.skip("SLURM is not installed (scripts/install.sh installs slurm-wlm and munge)")
    folder.mkdir(parents=True, exist_ok=True)
    started = []
    key = Path("/etc/munge/munge.key")
    for d in ("/etc/munge", "/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        subprocess.run(["su", "munge", "-s", "/bin/sh", "-c", "munged --force"], check=True, timeout=30)
        started.append(Path("/run/munge/munged.pid"))
    host, cpus = socket.gethostname(), os.cpu_count() or 1
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        f"ClusterName=lmcsweep", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SwitchType=switch/none", "MpiDefault=none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "ReturnToService=2", f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool", f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd.pid", f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd.log", f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "JobRequeue=1",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    (folder / "state").mkdir(exist_ok=True)
    (folder / "spool").mkdir(exist_ok=True)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(conf)], env=env, check=True, timeout=30)
            started.append(folder / f"{daemon}.pid")

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"
        _wait(idle, "the SLURM node", 60)
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, timeout=30)
        for pid_file in reversed(started):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 15)
                deadline = time.time() + 15
                while time.time() < deadline and _alive(pid):
                    time.sleep(0.1)
