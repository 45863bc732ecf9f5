"""Optuna variants: a grid is covered exactly once across a SIGKILL and a resume, one trial or two
at a time (real subprocess, real SQLite stores); trials are MLflow runs holding their
hyperparameters; query records carry them; orphaned trials of random/tpe searches are asked again;
trials run together give what they give alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from lmcsweep.cli import main
from lmcsweep.config import load_sweep
from lmcsweep.search.study import open_study, study_name, study_trials

SEARCH = """\
name: grid
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 240, subset_test: 200}
train: {iterations: 200it, batch_size: 24, checkpoint_every: 40it, model: {hidden: [16]}}
instability: {rewind: [0it], copies: 2, alphas: 3, splits: [test]}
search:
  sampler: grid
  space: {train.lr: [0.0012, 0.003], train.warmup: [0it, 20it]}
  objective: {metric: instability, split: test, rewind: 0it}
"""
GRID = {(0.0012, "0it"), (0.0012, "20it"), (0.003, "0it"), (0.003, "20it")}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_grid_of_four_is_covered_once_across_a_kill(tmp_path):
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(SEARCH)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--no-progress", str(sweep_file)]

    # kill -9 while the second trial trains (its dense run has started writing checkpoints)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (store / "checkpoints").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (store / "optuna.db").exists()  # the study exists before anything trains
    while len(list((store / "checkpoints").glob("train_*"))) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.2))  # inside the trial: its training alone takes longer
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before the kill"
    sweep = load_sweep(sweep_file)
    before = study_trials(sweep, store)
    assert 1 <= sum(t["state"] == "COMPLETE" for t in before) < 4
    assert [t["state"] for t in before].count("RUNNING") == 1

    # resume: the trial the kill interrupted goes on under its own number; every point once
    result = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study_trials(sweep, store)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert len(complete) == 4
    assert {(t["params"]["train.lr"], t["params"]["train.warmup"]) for t in complete} == GRID
    assert len(trials) == 4  # no trial asked twice
    asked = [t for t in before if t["state"] in ("COMPLETE", "RUNNING")]  # the same numbers, points, runs
    assert {t["number"]: (t["params"], t["mlflow_run_id"]) for t in asked} == {
        t["number"]: (t["params"], t["mlflow_run_id"]) for t in trials if t["number"] in {a["number"] for a in asked}}
    assert all(t["value"] is not None and 0 <= t["value"] <= 1 for t in complete)

    # the MLflow side: a trial run per trial under the sweep run, holding its hyperparameters
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "tags.`lmcsweep.sweep` = 'grid'", max_results=5000)
    sweep_run = next(r for r in runs if r.data.tags["lmcsweep.kind"] == "sweep")
    trial_runs = {r.info.run_id: r for r in runs if r.data.tags["lmcsweep.kind"] == "trial"}
    finished = [r for r in trial_runs.values() if r.info.status == "FINISHED"]
    assert Counter(r.info.status for r in trial_runs.values()) == Counter({"FINISHED": 4})
    assert {(float(r.data.params["hp.train.lr"]), r.data.params["hp.train.warmup"]) for r in finished} == GRID
    for r in trial_runs.values():
        assert r.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
    for t in complete:
        run = trial_runs[t["mlflow_run_id"]]
        assert run.data.tags["lmcsweep.trial"] == str(t["number"]) and run.info.status == "FINISHED"
        assert abs(run.data.metrics["objective"] - t["value"]) < 1e-12
    # every job of a trial nests (through its parents) under the trial's run
    by_id = {r.info.run_id: r for r in runs}
    for r in runs:
        if r.data.tags["lmcsweep.kind"] in ("train", "branch", "interpolate"):
            parent = r
            while parent.data.tags["lmcsweep.kind"] != "trial":
                parent = by_id[parent.data.tags["mlflow.parentRunId"]]
            assert parent.data.tags["lmcsweep.trial"] == r.data.tags["lmcsweep.trial"]

    # query records carry the trial's hyperparameters
    out = CliRunner().invoke(main, ["--store", str(store), "query", "--sweep", "grid", "--format", "json"])
    records = json.loads(out.output)
    assert {(r["hp.train.lr"], r["hp.train.warmup"]) for r in records} == GRID
    for t in complete:
        mine = [r for r in records if r["trial"] == t["number"]]
        assert len(mine) == 1 and mine[0]["instability"] == t["value"]

    # a trial's plan file damaged, another's deleted: verify says so; a second run has nothing to
    # do and records both again as they were; plan sees every job done
    plans = [store / "plans" / "grid" / f"trial-{t['number']}" / "plan.json" for t in complete[:2]]
    recorded = [p.read_bytes() for p in plans]
    plans[0].write_bytes(recorded[0][:-10])
    plans[1].unlink()
    found = CliRunner().invoke(main, ["--store", str(store), "verify"])  # (the console entry: one line, exit 3)
    assert type(found.exception).__name__ == "Damaged" and f"trial {complete[0]['number']}" in str(found.exception)
    again = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(sweep_file)])
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    assert [p.read_bytes() for p in plans] == recorded
    assert CliRunner().invoke(main, ["--store", str(store), "verify"]).exit_code == 0
    assert len(study_trials(sweep, store)) == 4
    plan = CliRunner().invoke(main, ["--store", str(store), "plan", str(sweep_file)])
    assert "4 trials" in plan.output and plan.output.splitlines()[-2].split() == ["total", "16", "16", "0"]


def _sweep(tmp_path: Path, search: str):
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH.split("search:")[0] + textwrap.dedent(search))
    return load_sweep(path)


def test_orphaned_random_trial_is_asked_again_once(tmp_path):
    sweep = _sweep(tmp_path, """\
        search:
          sampler: random
          trials: 3
          space: {train.lr: {low: 0.0001, high: 0.01, log: true}, train.warmup: [0it, 20it]}
        """)
    study, _ = open_study(sweep, tmp_path)
    first = study.ask()
    first.suggest_float("train.lr", 0.0001, 0.01, log=True)
    first.suggest_categorical("train.warmup", ["0it", "20it"])
    # the process dies here; the next one finds the trial RUNNING
    for _ in range(2):  # opening twice queues the point once
        open_study(sweep, tmp_path)
    trials = study_trials(sweep, tmp_path)
    assert [(t["state"], bool(t["orphaned"])) for t in trials] == [("FAIL", True), ("WAITING", False)]
    assert trials[1]["params"] == trials[0]["params"]
    # a trial killed once it had its point and its MLflow run stays RUNNING: the search resumes it
    # under its own number (tests/test_search.py::test_grid_of_four_is_covered_once_across_a_kill)
    study, _ = open_study(sweep, tmp_path)
    third = study.ask()  # the waiting point
    third.suggest_float("train.lr", 0.0001, 0.01, log=True)
    third.suggest_categorical("train.warmup", ["0it", "20it"])
    third.set_user_attr("mlflow_run_id", "r")
    open_study(sweep, tmp_path)
    after = study_trials(sweep, tmp_path)
    assert [t["state"] for t in after] == ["FAIL", "RUNNING"]  # not failed, its point not queued again


def test_study_identity(tmp_path):
    base = _sweep(tmp_path, "search: {sampler: grid, space: {train.lr: [0.1, 0.2]}}\n")
    more_trials = _sweep(tmp_path, "search: {sampler: grid, trials: 9, space: {train.lr: [0.1, 0.2]}}\n")
    edited = _sweep(tmp_path, "search: {sampler: grid, space: {train.lr: [0.1, 0.3]}}\n")
    assert study_name(base) == study_name(more_trials) != study_name(edited)
    assert study_name(base).startswith("grid-")


def test_invalid_variant_fails_only_its_trial(tmp_path):
    from lmcsweep.search.study import trial_plans

    path = tmp_path / "s.yaml"
    # each value is valid on its own (`validate` checks that), but warmup 15it with 10 iterations of
    # training is not: that point is an invalid variant, and fails its trial only
    path.write_text(SEARCH.split("search:")[0].replace("200it", "20it") +
                    "search: {sampler: grid, space: {train.warmup: [0it, 15it], train.iterations: [20it, 10it]}}\n")
    sweep = load_sweep(path)
    plans = trial_plans(sweep)
    assert sorted((p.overrides["train.warmup"], p.overrides["train.iterations"]) for p in plans) == \
        [("0it", "10it"), ("0it", "20it"), ("15it", "20it")]
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(path)])
    assert result.exit_code == 1 and "invalid variant" in result.output, result.output
    states = {(t["params"]["train.warmup"], t["params"]["train.iterations"]): t for t in study_trials(sweep, store)}
    assert {k: t["state"] for k, t in states.items()} == {("0it", "20it"): "COMPLETE", ("0it", "10it"): "COMPLETE",
                                                          ("15it", "20it"): "COMPLETE", ("15it", "10it"): "FAIL"}
    assert "train.warmup: warmup (15 iterations) is longer than training (10)" in states[("15it", "10it")]["error"]


def test_grid_trials_run_together_and_give_what_they_give_alone(tmp_path, monkeypatch):
    """On CPU a grid's trials are asked several at a time and their networks train in one group
    (`train.group` counts across trials); every point's objective equals the one-at-a-time run."""
    from lmcsweep.store import Store
    from lmcsweep.search import driver as search
    from lmcsweep.sweep import run_sweep
    from lmcsweep.tracking import Tracker

    from lmcsweep.run import together as copies

    monkeypatch.setattr(copies, "cores", lambda: 4)  # as on a 4-core node: 4 trials at once, 4 workers
    sweep = _sweep(tmp_path, "search:" + SEARCH.split("search:")[1])
    assert search.trials_at_once(sweep) == 4

    def objectives(store, at_once):
        monkeypatch.setattr(search, "trials_at_once", lambda s: at_once)
        outcome = run_sweep(sweep, Tracker(root=store), Store(store), progress=False)
        assert not outcome.failed and len(outcome.computed) == 4 * 4
        trials = study_trials(sweep, store)
        groups = {r.data.params["train.group"] for r in Tracker(root=store).runs_of_sweep("grid")
                  if r.data.tags.get("lmcsweep.kind") == "train"}
        return {(t["params"]["train.lr"], t["params"]["train.warmup"]): t["value"] for t in trials}, groups

    together, groups = objectives(tmp_path / "together", 4)
    assert groups == {"4"} and set(together) == GRID
    alone, groups = objectives(tmp_path / "alone", 1)
    assert groups == {"1"} and alone == together


def test_trials_killed_together_resume_under_their_numbers(tmp_path):
    """Trials asked together (2 kernel threads: 2 at once on a 2-core machine) and killed while
    they train all go on under their own numbers on the next run; each point once."""
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text(SEARCH)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--no-progress", str(sweep_file)]
    env = {**ENV, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while len(list((store / "checkpoints").glob("train_*"))) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before the kill"
    sweep = load_sweep(sweep_file)
    running = [t for t in study_trials(sweep, store) if t["state"] == "RUNNING"]
    assert len(running) == min(2, len(os.sched_getaffinity(0)))  # asked together, killed together

    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study_trials(sweep, store)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert sorted((t["params"]["train.lr"], t["params"]["train.warmup"]) for t in complete) == sorted(GRID)
    assert len(trials) == 4 and not [t for t in trials if t["state"] != "COMPLETE"]
    assert {t["number"]: t["params"] for t in running} == {t["number"]: t["params"] for t in complete
                                                          if t["number"] in {r["number"] for r in running}}


def test_earliest_stable_means_stable_from_there_on():
    from lmcsweep.records.objective import earliest_stable

    assert earliest_stable({0: [0.5, 0.7], 100: [0.01, 0.015], 500: [0.0, 0.01]}) == 100
    # k=100 dips below 2% by chance, 500 is unstable again: stable only from 2000 on
    assert earliest_stable({0: [0.5], 100: [0.01], 500: [0.03, 0.02], 2000: [0.001]}) == 2000
    assert earliest_stable({0: [0.01], 100: [0.019, 0.0199]}) == 0
    assert earliest_stable({0: [0.5], 100: [0.01], 500: [0.2]}) == float("inf")


def test_study_names_are_pinned():
    """A study's name is its identity in optuna.db: a drift would orphan every stored study (its
    random/TPE history, its failed trials). Fields added later are left out at their defaults."""
    from lmcsweep.search.study import study_name

    root = Path(__file__).parent.parent / "sweeps"
    assert study_name(load_sweep(root / "lenet_search.yaml")) == "lenet-search-ac45674233"
    assert study_name(load_sweep(root / "resnet20_search.yaml")) == "resnet20-search-c9f16d4b1b"


def test_query_after_an_edited_search_shows_the_new_studys_trials_only(tmp_path):
    """Editing the space starts a new study; a point both studies have is computed once (the new
    trial reuses it), and query lists each current point once, under the new study's trial."""
    path, store = tmp_path / "s.yaml", tmp_path / "store"
    base = SEARCH.replace("iterations: 200it", "iterations: 60it").replace(
        "space: {train.lr: [0.0012, 0.003], train.warmup: [0it, 20it]}", "space: {train.lr: [0.0012, 0.003]}")
    path.write_text(base)
    run = lambda: CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(path)])  # noqa: E731
    assert run().exit_code == 0
    path.write_text(base.replace("[0.0012, 0.003]", "[0.0012, 0.005]"))
    result = run()
    assert result.exit_code == 0 and "reused" in result.output, result.output

    def records(*extra):
        out = CliRunner().invoke(main, ["--store", str(store), "query", "--sweep", "grid", "--format", "json", *extra])
        return json.loads(out.output)

    now, everything = records(), records("--superseded")
    assert sorted(r["hp.train.lr"] for r in now) == [0.0012, 0.005]
    assert len(everything) == 4   # both studies' trials, the shared point twice
    new_study = {t["number"] for t in study_trials(load_sweep(path), store)}
    assert {r["trial"] for r in now} == new_study
    status = CliRunner().invoke(main, ["--store", str(store), "status", "grid"]).output
    assert "trials finished 2" in status, status   # the new study's, not 4
