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
def mlflow_server(backend: str, artifacts: Path) -> Iterator[str]:
    """`mlflow server` on loopback over `backend`; yields its http URI."""
    port = free_port()
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
