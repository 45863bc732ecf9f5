"""What `lmcsweep run` says while and after it runs, through the real CLI in subprocesses: a line
per job as it ends (stderr not a terminal), the end-of-run summary by run name (computed, reused
from which sweep), Ctrl-C without a traceback from any process and a rerun that resumes, a
search's trials (`query --kind trials` against the Optuna study), and `plan`'s time estimate from
the store's measured throughput."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from lmcsweep.config import load_sweep
from lmcsweep.plan.build import build_plan

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SWEEP = """\
name: {name}
experiment: tests
preset: lenet
data: {{dataset: fashion_mnist, subset_train: 240, subset_test: 200}}
train: {{iterations: {iterations}it, batch_size: 24, eval_every: 100it, checkpoint_every: 20it, model: {{hidden: [16]}}}}
instability: {{rewind: [0it, 20it], copies: 2, alphas: 3, splits: [test]}}
"""
LINE = re.compile(r"^\[networks (\d+)/5, interpolations (\d+)/2\] (computed|reused)\s+(.+?)  ")


def lmc(store: Path, *args, env=ENV, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env, **kw)


def write(tmp_path: Path, name: str, iterations: int = 60) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SWEEP.format(name=name, iterations=iterations))
    return path


def test_lines_per_job_summary_by_name_reuse_and_plan_estimate(tmp_path):
    store, first = tmp_path / "store", write(tmp_path, "first")
    names = sorted(j.name for j in build_plan(load_sweep(first)).jobs)

    # (a fresh store's "time left: no measurements": tests/test_cli.py)
    # stderr is a pipe: a line per job, as it ends (the first arrives while the run goes on)
    proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", str(first)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_line = proc.stderr.readline()
    assert proc.poll() is None, "the first job's line came only at the end"
    rest, err = proc.communicate(timeout=600)
    lines = [first_line] + err.splitlines()
    assert proc.returncode == 0, rest + err
    matched = [LINE.match(line) for line in lines if line.strip()]
    assert all(matched), lines
    assert sorted(m[4] for m in matched) == names and {m[3] for m in matched} == {"computed"}
    counts = [(int(m[1]), int(m[2])) for m in matched]
    assert counts == sorted(counts) and counts[-1] == (5, 2)  # counted up as they end, interpolations too
    assert matched[0][4] == "train rep 0" and all(m[4].startswith("interpolate") for m in matched[-2:])
    summary = rest.splitlines()
    assert summary[0].startswith("first: 7 jobs run, 0 reused from the store, 0 already done, 0 failed, 0 blocked")
    assert summary[1].startswith("  computed (7): ") and sorted(summary[1][16:].split(", ")) == names, summary

    # the same network in another sweep: every job reused, named with where it came from
    second = write(tmp_path, "second")
    out = lmc(store, "run", "--no-progress", second)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "7 reused from the store" in out.stdout and "  reused from sweep first (7): " in out.stdout, out.stdout
    assert sorted(m[4] for m in map(LINE.match, out.stderr.splitlines()) if m and m[3] == "reused") == names

    # a longer version of it: the time left comes from what the store measured
    longer = write(tmp_path, "longer", iterations=120)
    plan = lmc(store, "plan", longer).stdout
    assert re.search(r"time left: about \d+s on \d cores? \(measured from 5 training, 2 interpolation runs "
                     r"of this network here\)", plan) or \
        re.search(r"time left: about \d+s on \d cores? \(measured from 10 training, 4 interpolation runs", plan), plan


def test_ctrl_c_prints_no_traceback_and_the_rerun_resumes(tmp_path):
    """SIGINT to the whole process group (as a terminal's Ctrl-C) while the copies train in forked
    workers: one line with the resume hint, no traceback from the runner, its workers or the
    tracking process; `plan` counts the interrupted networks; the rerun finishes the sweep."""
    store, path = tmp_path / "store", write(tmp_path, "ctrlc", iterations=600)
    env = {**ENV, "OMP_NUM_THREADS": "2"}  # two copy workers where there are two cores
    proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", str(path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while not list(store.glob("checkpoints/branch_*/resume.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its branches trained"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted; run the same command again to resume"), err

    plan = lmc(store, "plan", path, env=env).stdout
    resumed = re.search(r"of the jobs left, (\d+) \(interrupted\) resume from their resume points \((\d+) of their "
                        r"(\d+) iterations trained\); (\d+) not started", plan)
    assert resumed and int(resumed[1]) >= 1 and 0 < int(resumed[2]) <= int(resumed[3]), plan
    rerun = lmc(store, "run", "--no-progress", path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    counts = re.match(r"ctrlc: (\d+) jobs run, 0 reused from the store, (\d+) already done, 0 failed, 0 blocked",
                      rerun.stdout)
    assert counts and int(counts[1]) >= int(resumed[1]) + int(resumed[4]) and sum(map(int, counts.groups())) == 7


SEARCH = """\
name: grid
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 240, subset_test: 200}
train: {iterations: 60it, batch_size: 24, checkpoint_every: 20it, model: {hidden: [16]}}
instability: {rewind: [0it], copies: 2, alphas: 3, splits: [test]}
search:
  sampler: grid
  space: {train.lr: [0.0012, 0.003]}
  objective: {metric: instability, split: test, rewind: 0it}
"""


def test_search_prints_every_trial_and_the_best_and_query_trials_matches_the_study(tmp_path):
    import optuna

    from lmcsweep.search.study import storage_url, study_name

    store, path = tmp_path / "store", tmp_path / "grid.yaml"
    path.write_text(SEARCH)
    out = lmc(store, "run", "--no-progress", path)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep = load_sweep(path)
    study = optuna.load_study(study_name=study_name(sweep), storage=storage_url(sweep, store))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        assert re.search(rf"trial {t.number}\s+lr={t.params['train.lr']}\s+objective {t.value:.6g}\s+COMPLETE",
                         out.stdout), out.stdout
    best = min(trials, key=lambda t: t.value)
    assert f"best: trial {best.number} (train.lr={best.params['train.lr']}): objective {best.value:.6g}" in out.stdout

    rows = json.loads(lmc(store, "query", "--kind", "trials", "--format", "json").stdout)
    assert [(r["sweep"], r["trial"], r["train.lr"], r["objective"], r["state"]) for r in rows] == \
        [("grid", t.number, t.params["train.lr"], t.value, "COMPLETE") for t in trials]
    table = lmc(store, "query", "--kind", "trials").stdout.splitlines()
    assert table[0].split()[:5] == ["sweep", "trial", "train.lr", "objective", "state"] and len(table) == 3


def test_time_left_names_the_unmeasured_interpolations_when_only_they_are_left(tmp_path):
    import io
    from lmcsweep.run.progress import Costs, Progress

    jobs = build_plan(load_sweep(write(tmp_path, "eta"))).jobs
    iterations = sum(j.iterations for j in jobs if j.kind in ("train", "branch"))
    assert Progress("eta", jobs, iterations, Costs(), bar=False, stream=io.StringIO()).eta() == ""  # nothing measured
    shown = Progress("eta", jobs, iterations, Costs(iteration=0.01), bar=False, stream=io.StringIO())
    assert shown.eta().endswith("s + 2 interpolations")
    shown.iterations_done, shown.done["networks"] = iterations, 5  # the networks trained: only interpolations left
    assert shown.eta() == "2 interpolations"
    shown.done["interpolations"] = 1
    assert shown.eta() == "1 interpolation"
