"""Crash safety, end to end in real subprocesses against real SQLite stores: a sweep killed with
SIGKILL at a random point during training resumes to exactly the results of an uninterrupted run,
with one FINISHED run per job; a second run does nothing; a failing job is isolated."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from lmcsweep.cli import main

SWEEP = """\
name: resume
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 240, subset_test: 200}
train: {iterations: 200it, batch_size: 24, eval_every: 100it, checkpoint_every: 20it, model: {hidden: [32]}}
replicates: 1
instability: {rewind: [0it, 40it], copies: 2, alphas: 3, splits: [test]}
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def lmc(store: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def runs(store: Path, sweep: str) -> list:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.`lmcsweep.sweep` = '{sweep}'", max_results=5000)


def records(store: Path, sweep: str) -> dict:
    out = CliRunner().invoke(main, ["--store", str(store), "query", "--sweep", sweep, "--format", "json"])
    assert out.exit_code == 0, out.output
    return {(r["trial"], r["replicate"], r["rewind"], r["pair"], r["split"]):
            (r["instability"], r["error_endpoints"], r["error_max"]) for r in json.loads(out.output)}


def resume_files(store: Path) -> list[Path]:
    return sorted((store / "checkpoints").glob("*/resume.pt"))


def processes_on(store: Path) -> list[int]:
    """Live processes whose command line names `store` (the run, its forked copy workers and its
    tracking process)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(store).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


def test_sigkill_mid_training_then_resume_is_exact(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP)
    clean = tmp_path / "clean"

    # 1. run, and kill -9 at a random point of training: right after the k-th resume checkpoint seen
    #    (k random; a resume checkpoint exists only while its job is training). Training is quick, so
    #    a kill can land between two jobs or after the end: then the attempt is made again in a fresh
    #    store with a smaller k, so that the test always exercises a kill during training.
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    k = rng.randint(1, 12)
    for attempt in range(4):
        killed = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(killed), "run",
                                 "--no-progress", str(sweep)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        seen: set = set()
        deadline = time.time() + 300
        while len(seen) < k and proc.poll() is None and time.time() < deadline:
            for path in resume_files(killed):
                try:
                    seen.add((path.parent.name, path.stat().st_mtime_ns))
                except FileNotFoundError:  # the job finished meanwhile
                    pass
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone = time.time() + 10  # copy workers and the tracking process die with the run (PR_SET_PDEATHSIG)
        while processes_on(killed) and time.time() < gone:
            time.sleep(0.05)
        assert not processes_on(killed), "copy workers or the tracking process outlived the killed run"
        interrupted = [p.parent.name for p in resume_files(killed)]
        if proc.returncode == -signal.SIGKILL and interrupted:
            break
        k = max(1, k // 2)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill (k {k}, seed {seed})"
    assert interrupted, f"killed outside training in every attempt (seed {seed})"
    stopped_at = {job: torch.load(killed / "checkpoints" / job / "resume.pt", weights_only=False)["iteration"]
                  for job in interrupted}
    left_running = [r for r in runs(killed, "resume") if r.info.status == "RUNNING"]
    assert left_running
    status = CliRunner().invoke(main, ["--store", str(killed), "status", "resume"])
    assert status.exit_code == 0 and "INTERRUPTED" in status.output, status.output
    assert int(status.output.splitlines()[2].split()[4]) > 0, status.output   # the interrupted column

    # 2. resume: finishes the sweep, the killed runs are marked KILLED
    result = lmc(killed, "run", "--no-progress", sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    after = runs(killed, "resume")
    assert not [r for r in after if r.info.status == "RUNNING"]
    assert {r.info.run_id for r in left_running} <= {r.info.run_id for r in after if r.info.status in
                                                     ("KILLED", "FINISHED")}
    finished = Counter(r.data.tags["lmcsweep.job"] for r in after
                       if r.info.status == "FINISHED" and "lmcsweep.job" in r.data.tags
                       and r.data.tags["lmcsweep.kind"] != "sweep")
    assert len(finished) == 7 and set(finished.values()) == {1}, finished
    assert not resume_files(killed)

    # 3. the same sweep uninterrupted in another store: identical results, bit for bit
    result = lmc(clean, "run", "--no-progress", sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # the interrupted jobs went on from their resume checkpoint, not from the start, in a new run
    # holding the whole curve: the uninterrupted run's, value for value (the part before the resume
    # point comes from the checkpoint, whatever of it reached the killed run)
    client = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    clean_runs = {r.data.tags.get("lmcsweep.job"): r for r in runs(clean, "resume")}
    clean_client = MlflowClient(f"sqlite:///{clean / 'mlflow.db'}")
    for job, iteration in stopped_at.items():
        run = next(r for r in after if r.data.tags.get("lmcsweep.job") == job and r.info.status == "FINISHED")
        assert run.data.tags["lmcsweep.resumed_from"] == str(iteration)
        old = next(r for r in after if r.data.tags.get("lmcsweep.job") == job and r.info.status == "KILLED")
        for key in ("loss", "test_accuracy"):
            curve = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            whole = sorted((m.step, m.value) for m in clean_client.get_metric_history(clean_runs[job].info.run_id, key))
            assert curve == whole and curve[-1][0] == 200, (job, key, iteration)
            reached = {(m.step, m.value) for m in client.get_metric_history(old.info.run_id, key)}
            assert reached <= set(curve), (job, key)
    assert records(killed, "resume") == records(clean, "resume")
    assert len(records(clean, "resume")) == 2
    finals = sorted((clean / "checkpoints").glob("*/it200.pt"))
    assert len(finals) == 5  # the dense run and 2 x 2 branches, at T
    for final in finals:
        a = torch.load(final, weights_only=False)["model"]
        b = torch.load(killed / "checkpoints" / final.parent.name / final.name, weights_only=False)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), final.parent.name

    # 4. a second run does nothing; plan and status agree
    result = CliRunner().invoke(main, ["--store", str(killed), "run", "--no-progress", str(sweep)])
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert len(runs(killed, "resume")) == len(after)
    plan = CliRunner().invoke(main, ["--store", str(killed), "plan", str(sweep)])
    assert plan.output.splitlines()[-2].split() == ["total", "7", "7", "0"], plan.output
    status = CliRunner().invoke(main, ["--store", str(killed), "status"])
    assert status.exit_code == 0 and status.output.splitlines()[2].split()[:7] == \
        ["resume", "7", "7", "0", "0", "0", "0"], status.output


def test_networks_trained_before_a_kill_are_not_trained_again(tmp_path):
    """The copies of a wave are marked FINISHED together, when the last one ends. A copy that has
    trained to the end leaves a "trained" record (its weights are the final checkpoint), so a kill
    before the wave ends costs it nothing: the next run takes it from T, with its whole curve."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(killed), "run",
                             "--no-progress", str(sweep)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    trained: dict = {}
    deadline = time.time() + 300
    while not trained and proc.poll() is None and time.time() < deadline:
        for path in resume_files(killed):
            try:
                if path.parent.name.startswith("branch_") and path.stat().st_size < 20_000:
                    record = torch.load(path, weights_only=False)
                    if record.get("final"):
                        trained[path.parent.name] = record
            except (FileNotFoundError, EOFError, RuntimeError):  # replaced or removed meanwhile
                pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert trained, "no branch was seen trained before the run ended"
    job, record = next(iter(trained.items()))
    assert record["iteration"] == 200 and "model" not in record and record["metrics"]
    assert (killed / "checkpoints" / job / "it200.pt").exists()

    result = lmc(killed, "run", "--no-progress", sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lmc(clean, "run", "--no-progress", sweep, cwd=tmp_path).returncode == 0
    after = [r for r in runs(killed, "resume") if r.data.tags.get("lmcsweep.job") == job]
    done = [r for r in after if r.info.status == "FINISHED"]
    assert len(done) == 1 and done[0].data.tags["lmcsweep.resumed_from"] == "200"  # no step trained again
    reference = next(r for r in runs(clean, "resume") if r.data.tags.get("lmcsweep.job") == job)
    client = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    clean_client = MlflowClient(f"sqlite:///{clean / 'mlflow.db'}")
    for key in ("loss", "test_accuracy", "final_test_accuracy"):
        assert sorted((m.step, m.value) for m in client.get_metric_history(done[0].info.run_id, key)) == \
            sorted((m.step, m.value) for m in clean_client.get_metric_history(reference.info.run_id, key)), key
    assert records(killed, "resume") == records(clean, "resume")
    assert not resume_files(killed)


FAILING = """\
name: failing
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 240, subset_test: 200}
train: {iterations: 40it, batch_size: 24, optimizer: sgd, checkpoint_every: 10it, model: {hidden: [16]}}
instability: {rewind: [0it], copies: 2, alphas: 3, splits: [test]}
search:
  sampler: grid
  space: {train.lr: [0.01, 1000000.0]}    # the second variant diverges: its loss becomes inf/NaN
  objective: {metric: instability, rewind: 0it}
"""


def test_failing_job_is_isolated_and_retried(tmp_path):
    sweep = tmp_path / "failing.yaml"
    sweep.write_text(FAILING)
    store = tmp_path / "store"
    result = lmc(store, "run", "--no-progress", sweep, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stderr and "FloatingPointError" in result.stderr

    def by_lr(all_runs):
        out: dict = {}
        for r in all_runs:
            if r.data.tags["lmcsweep.kind"] in ("train", "branch", "interpolate"):
                out.setdefault(r.data.params.get("hp.train.lr"), Counter())[(r.data.tags["lmcsweep.kind"],
                                                                              r.info.status)] += 1
        return out

    first = runs(store, "failing")
    counts = by_lr(first)
    # the diverging variant: its dense run FAILED (error as tag and artifact), nothing below it ran
    assert counts["1000000.0"] == Counter({("train", "FAILED"): 1})
    # the other variant, independent of it, finished
    assert counts["0.01"] == Counter({("train", "FINISHED"): 1, ("branch", "FINISHED"): 2,
                                      ("interpolate", "FINISHED"): 1})
    failed = next(r for r in first if r.info.status == "FAILED" and r.data.tags["lmcsweep.kind"] == "train")
    assert "FloatingPointError" in failed.data.tags["lmcsweep.error"]
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert "error.txt" in [f.path for f in client.list_artifacts(failed.info.run_id)]
    trials = {r.data.tags["lmcsweep.trial"]: r.info.status for r in first if r.data.tags["lmcsweep.kind"] == "trial"}
    assert sorted(trials.values()) == ["FAILED", "FINISHED"]

    # a plain second run reports the failure again and runs nothing (in process from here: no training)
    result = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", str(sweep)])
    assert result.exit_code == 1 and "FAILED" in result.output, result.output
    assert len(runs(store, "failing")) == len(first)

    # --retry-failed runs it again (it fails again: the config diverges)
    result = CliRunner().invoke(main, ["--store", str(store), "run", "--no-progress", "--retry-failed", str(sweep)])
    assert result.exit_code == 1 and "FloatingPointError" in result.output, result.output
    counts = by_lr(runs(store, "failing"))
    assert counts["1000000.0"] == Counter({("train", "FAILED"): 2})
    assert counts["0.01"][("train", "FINISHED")] == 1  # the finished variant was not rerun


def test_a_killed_tracking_process_stops_the_run_cleanly_and_it_resumes(tmp_path):
    """If the tracking process dies (OOM killer, kill -9), the run stops with a clear message and
    no process left behind; the next run resumes and finishes the sweep."""
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--no-progress",
                             str(sweep)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not resume_files(store) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    helpers = [pid for pid in processes_on(store)
               if b"lmcsweep.tracking import serve" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(helpers) == 1, "no tracking process found while training"
    os.kill(helpers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "the tracking process exited (status -9)" in err and "run the same command again to resume" in err, err
    gone = time.time() + 10
    while processes_on(store) and time.time() < gone:
        time.sleep(0.05)
    assert not processes_on(store)
    result = lmc(store, "run", "--no-progress", sweep, cwd=tmp_path)
    assert result.returncode == 0 and "0 failed" in result.stdout, result.stdout + result.stderr
    finished = [r for r in runs(store, "resume") if r.info.status == "FINISHED"
                and r.data.tags.get("lmcsweep.kind") != "sweep"]
    assert len({r.data.tags["lmcsweep.job"] for r in finished}) == len(finished) == 7
