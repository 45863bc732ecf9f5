"""Damaged and missing outputs, through the CLI: every stored file is checked against the checksum
written beside it; a damaged or missing output of a finished job is found (`lmcsweep verify`, exit
1), never used, and computed again by the next `lmcsweep run` or by `verify --repair`, bit-identical
to the original; a damaged resume point is discarded."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmcsweep.cli import main
from conftest import SMALL_SWEEP

IMP_SWEEP = """\
name: impy
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 40it, batch_size: 60, eval_every: 20it, checkpoint_every: 20it}
imp: {levels: 1, rewind: [20it], instability: false, controls: []}
"""


def lmc(store: Path, *args: str):
    return CliRunner().invoke(main, ["--store", str(store), *map(str, args)], catch_exceptions=False)


def results(store: Path, sweep: str) -> list[dict]:
    """The sweep's records without run ids (a repair adds runs; the numbers must not change)."""
    out = lmc(store, "query", "--sweep", sweep, "--format", "csv").output
    return [{k: v for k, v in row.items() if k != "run_id"} for row in csv.DictReader(io.StringIO(out))]


def files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "checkpoints").glob("*/*.pt"))}


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, Path]:
    """A finished small instability sweep: (its sweep file, its store), never changed."""
    root = tmp_path_factory.mktemp("integrity")
    path = root / "small.yaml"
    path.write_text(SMALL_SWEEP.format(name="small", replicates=1, copies=2))
    store = root / "store"
    result = lmc(store, "run", path, "--no-progress")
    assert result.exit_code == 0, result.output
    return path, store


@pytest.fixture
def copy(done, tmp_path) -> Path:
    shutil.copytree(done[1], tmp_path / "store", symlinks=True)
    return tmp_path / "store"


def _branch_end(store: Path) -> Path:
    return sorted(store.glob("checkpoints/branch_*/it60.pt"))[0]


def test_corrupt_final_checkpoint_is_found_and_the_next_run_repairs_it(done, copy):
    sweep, original = done
    target = _branch_end(copy)
    with open(target, "r+b") as f:  # 16 bytes overwritten in the middle: the file still loads
        f.seek(target.stat().st_size // 2)
        f.write(b"\xa5" * 16)
    found = lmc(copy, "verify")
    assert found.exit_code == 1
    assert f"damaged  small  " in found.output and f"{target.parent.name}  (it60.pt damaged)" in found.output
    assert "1 damaged, 0 missing" in found.output
    again = lmc(copy, "run", sweep, "--no-progress")
    assert again.exit_code == 0 and "1 jobs run" in again.output and "1 of them repaired" in again.output
    assert "  repaired: branch rep 0 k=" in again.output and "(it60.pt damaged)" in again.output, again.output
    assert files(copy) == files(original)
    assert results(copy, "small") == results(original, "small")
    assert lmc(copy, "verify", "small").exit_code == 0


def test_deleted_rewind_checkpoint_is_recomputed_by_verify_repair(done, copy):
    sweep, original = done
    (next(copy.glob("checkpoints/train_*")) / "it20.pt").unlink()
    planned = lmc(copy, "plan", sweep)  # `run` would train it again: plan counts it as left
    assert re.search(r"train +1 +0 +1", planned.output) and "1 finished before but" in planned.output, planned.output
    found = lmc(copy, "verify", "small")
    assert found.exit_code == 1 and "(it20.pt missing)" in found.output
    fixed = lmc(copy, "verify", "--repair")
    assert fixed.exit_code == 0, fixed.output
    assert "small: 1 jobs repaired, 0 failed" in fixed.output and "all outputs ok" in fixed.output
    assert files(copy) == files(original)
    assert results(copy, "small") == results(original, "small")


def test_truncated_checkpoint_is_not_nothing_to_do_and_another_sweep_never_reads_it(done, copy, tmp_path):
    sweep, original = done
    target = _branch_end(copy)
    target.write_bytes(target.read_bytes()[:1000])
    # a second sweep (more alphas) interpolates the same branches: it recomputes the damaged one first
    wider = tmp_path / "wider.yaml"
    wider.write_text(sweep.read_text().replace("name: small", "name: wider").replace("alphas: 5", "alphas: 6"))
    result = lmc(copy, "run", wider, "--no-progress")
    assert result.exit_code == 0 and "1 of them repaired" in result.output, result.output
    assert files(copy) == files(original)
    assert lmc(copy, "run", sweep, "--no-progress").output.startswith("small: nothing to do")


def test_unknown_sweep_is_exit_2(done):
    result = lmc(done[1], "verify", "nosuch")
    assert result.exit_code == 2 and "no sweep 'nosuch'" in result.output


@pytest.mark.parametrize("repair", [["run"], ["verify", "--repair"]])
def test_truncated_mask_is_recomputed(tmp_path, repair):
    """The level's ticket is made again too, the same bytes (also from the plan read back from
    plan.json, by verify --repair)."""
    path = tmp_path / "imp.yaml"
    path.write_text(IMP_SWEEP)
    store = tmp_path / "store"
    assert lmc(store, "run", path, "--no-progress").exit_code == 0
    before = files(store)
    masks = sorted(store.glob("checkpoints/prune_*/mask.pt"))
    assert len(masks) == 2
    target = masks[-1]
    target.write_bytes(target.read_bytes()[:-7])
    found = lmc(store, "verify", "impy")
    assert found.exit_code == 1 and "(mask.pt damaged)" in found.output
    result = lmc(store, *repair, *([path, "--no-progress"] if repair == ["run"] else []))
    assert result.exit_code == 0 and "repaired" in result.output, result.output
    assert any(name.endswith("ticket.pt") for name in before)
    assert files(store) == before
    assert lmc(store, "verify").exit_code == 0


def test_truncated_resume_point_is_discarded(done, tmp_path):
    """Kill a run while a job has a resume point, truncate it: the job starts again (not from
    garbage) and ends as in an uninterrupted run."""
    sweep, original = done
    store = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", str(sweep),
                             "--no-progress"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list(store.glob("checkpoints/*/resume.pt")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    points = list(store.glob("checkpoints/*/resume.pt"))
    assert points, "the run ended before a resume point was seen"
    for point in points:
        point.write_bytes(point.read_bytes()[:100])
    result = lmc(store, "run", sweep, "--no-progress")
    assert result.exit_code == 0, result.output
    assert not list(store.glob("checkpoints/*/resume.pt"))
    assert files(store) == files(original)
    assert results(store, "small") == results(original, "small")


def test_deleted_plan_is_reported_missing_until_the_sweep_runs_again(done, copy):
    sweep, _ = done
    (copy / "plans" / "small" / "plan.json").unlink()
    for args in ([], ["small"]):
        found = lmc(copy, "verify", *args)
        assert found.exit_code == 1, found.output
        assert "missing  small  (its plan plans/small/plan.json is missing: run its sweep file again" in found.output
    again = lmc(copy, "run", sweep, "--no-progress")
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert lmc(copy, "verify").exit_code == 0
