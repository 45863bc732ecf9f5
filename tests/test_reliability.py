"""The reliability suite (bench/reliability.py) in small form, part by part, on its instability
sweep: two SIGKILLs of the whole process group and a rerun, a deleted plan and a damaged MLflow
database, a full tmpfs disk, a few hundred fuzz files. Each part's failure figures (lost,
duplicated, not identical, undetected, used silently, tracebacks, hangs) must be 0; and the
comparison the suite rests on must see a single changed checkpoint byte. The other damages (a
checkpoint, a mask, a resume point) are tested in test_integrity.py."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _reliability import compare, results, write_sweep  # noqa: E402
from _reliability_parts import (corruption_trials, full_disk_trials, fuzz_trial, kill_trials,  # noqa: E402
                                reference)


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> dict:
    """An uninterrupted run of the suite's instability sweep, never changed."""
    root = tmp_path_factory.mktemp("reliability")
    return reference("instability", write_sweep("instability", root / "sweeps"), root / "ref")


def no_failures(row: dict) -> None:
    assert row["tried"] > 0 and row["failures"] and not any(row["failures"].values()), row


def test_the_comparison_sees_one_changed_byte(ref, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(ref["store"], store)
    target = sorted(store.glob("checkpoints/branch_*/it60.pt"))[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    assert compare(results(store, "instability"), ref["results"])["differ"] == ["checkpoints"]
    assert compare(results(ref["store"], "instability"), ref["results"]) == {"lost": [], "duplicated": [],
                                                                           "differ": []}


def test_kills_then_reruns_end_as_the_uninterrupted_run(ref, tmp_path):
    row, trials = kill_trials("instability", ref, 2, random.Random(3), tmp_path)
    no_failures(row)
    assert row["tried"] == 2 and sum(t.get("landed", False) for t in trials) == 2
    episodes = [t for t in trials if t["part"] == "kill-episode"]
    assert episodes and all(t["exit"] == 0 for t in episodes)


def test_a_deleted_plan_and_a_damaged_database_are_found(ref, tmp_path):
    rows = list(corruption_trials({"instability": ref}, random.Random(4), tmp_path, quick=True,
                                  files=["plan file", "MLflow database"]))
    assert [r["what"] for r, _ in rows] == ["damaged plan file", "damaged MLflow database"]
    for row, trials in rows:
        no_failures(row)
        assert len(trials) == 1 and trials[0]["detected"], trials
    plan = rows[0][1][0]
    assert plan["how"] == "delete" and plan["repaired"] and "plan" in plan["said"][0]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_one_line_and_the_rerun_is_identical(ref, tmp_path):
    row, trials = full_disk_trials(ref, tmp_path, [2.0])
    no_failures(row)
    assert trials[0]["exit"] == 3 and trials[0]["enospc"] and trials[0]["database_ok"]


def test_fuzz_counts(tmp_path):
    row, trials = fuzz_trial(150, tmp_path)
    no_failures(row)
    assert row["tried"] == 150 and not trials
