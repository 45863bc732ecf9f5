"""A store that cannot be used, through the CLI (the console entry point, in a subprocess): a
damaged MLflow database, a full disk, a read-only store. Each ends in one line saying what, where
and what to do, exit 3, the traceback in <store>/lmcsweep-errors.log; a full disk stops the
sweep without failing its jobs, and once there is space the same command finishes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_SWEEP

ROOT = Path(__file__).resolve().parents[1]


def lmc(store: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    return subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120)


def one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines[0]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_SWEEP.format(name="small", replicates=1, copies=2))
    return path


@pytest.fixture
def tmpfs(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """A store with a sweep planned in it (its MLflow database made), never changed."""
    root = tmp_path_factory.mktemp("planned")
    (root / "small.yaml").write_text(SMALL_SWEEP.format(name="small", replicates=1, copies=2))
    assert lmc(root / "store", "run", "--plan-only", root / "small.yaml").returncode == 0
    return root / "store"


@pytest.mark.parametrize("damage,commands", [("truncated", [["query"]]),
                                             ("garbled", [["status"], ["run", "--no-progress"]]),
                                             ("page", [["verify"]])])
def test_damaged_database_is_one_line(tmp_path, sweep, planned, damage, commands):
    store = tmp_path / "store"
    shutil.copytree(planned, store)
    db = store / "mlflow.db"
    if damage == "truncated":  # a real database cut short
        db.write_bytes(db.read_bytes()[:20000])
    elif damage == "page":  # one page in its middle garbled: only SQLite's own check (verify) sees it
        data = bytearray(db.read_bytes())
        at = len(data) // 2 // 4096 * 4096
        data[at:at + 4096] = bytes(b ^ 0xA5 for b in data[at:at + 4096])
        db.write_bytes(bytes(data))
    else:
        db.write_bytes(os.urandom(50000))
    for args in commands:
        one_line(lmc(store, *args, *([sweep] if args[0] == "run" else [])), "MLflow database", str(db), "restore it")
    assert "Traceback" in (store / "lmcsweep-errors.log").read_text()


def test_full_disk_stops_the_sweep_then_the_same_command_finishes_it(tmp_path, sweep, tmpfs):
    store = tmpfs / "store"
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:  # leaves about 2 MB: enough to start, not to finish
        f.write(b"\0" * (18 * 2 ** 20))
    full = lmc(store, "run", sweep, "--no-progress")
    one_line(full, "no space left on device (ENOSPC)", str(store), "free space")
    filler.unlink()
    again = lmc(store, "run", sweep, "--no-progress")
    assert again.returncode == 0 and "0 failed" in again.stdout, again.stdout + again.stderr
    assert lmc(store, "verify").returncode == 0


def test_full_disk_while_mlflow_makes_the_database_leaves_no_half_made_one(tmp_path, sweep, tmpfs):
    """No cached empty database (a new MLflow version): MLflow's migrations run out of space half
    way. The store is left without a database (not with half a schema, which failed every later
    command with a traceback), and once there is space the same command runs the sweep."""
    store, cache = tmpfs / "store", str(tmp_path / "cache")
    with open(tmpfs / "filler", "wb") as f:  # leaves 0.5 MB: less than the schema needs
        f.write(b"\0" * (39 * 2 ** 19))
    one_line(lmc(store, "run", sweep, "--no-progress", XDG_CACHE_HOME=cache), "ENOSPC", str(store))
    assert not (store / "mlflow.db").exists() and not list(store.glob(".mlflow.db.*"))
    (tmpfs / "filler").unlink()
    again = lmc(store, "run", sweep, "--no-progress", XDG_CACHE_HOME=cache)
    assert again.returncode == 0 and "0 failed" in again.stdout, again.stdout + again.stderr


def test_read_only_store_is_one_line(tmp_path, sweep, tmpfs, planned):
    store = tmpfs / "store"
    shutil.copytree(planned, store)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    one_line(lmc(store, "run", sweep, "--no-progress"), "read-only", str(store))


def test_store_behind_a_file_is_one_line(tmp_path, sweep):
    (tmp_path / "afile").write_text("")
    store = tmp_path / "afile" / "store"
    one_line(lmc(store, "run", sweep, "--no-progress"), "a file is in the way", str(store))
