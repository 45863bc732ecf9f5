"""A random search's trials asked and told by the workers themselves: through the CLI, 3 workers
ask exactly `trials` trials, each told once with the objective recorded on its run; the trial
slot counter never hands out more slots than the search has room for, however many processes race."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import optuna

from lmcsweep import slots
from lmcsweep.queue import Queue, default_uri
from lmcsweep.tracking import Tracker

RANDOM = """\
name: rnd
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 300, subset_test: 200}
train: {iterations: 20it, batch_size: 60, eval_every: 10it, checkpoint_every: 10it, model: {hidden: [16]}}
replicates: 1
instability: {rewind: [0it], copies: 2, alphas: 3, train_examples: 200}
search:
  sampler: random
  trials: 5
  space: {train.lr: {low: 0.001, high: 0.01, log: true}}
  objective: {metric: instability, split: test, rewind: 0it, direction: minimize}
"""


def test_three_workers_ask_and_tell_a_random_search_exactly_once(tmp_path):
    path = tmp_path / "rnd.yaml"
    path.write_text(RANDOM)
    store = tmp_path / "store"
    out = subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--workers", "3",
                          path], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    url = f"sqlite:///{store / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # trial n has the point the sampler seeded by n gives, as in one process (`lmcsweep plan`'s)
    from lmcsweep.config import load_sweep
    from lmcsweep.search.study import trial_plans

    expected = [p.overrides["train.lr"] for p in trial_plans(load_sweep(path))]
    assert [t.params["train.lr"] for t in sorted(trials, key=lambda t: t.number)] == expected
    assert len(set(expected)) == 5

    tracker = Tracker(root=store)
    runs = tracker.runs_of_sweep("rnd", status="FINISHED")
    computed = [r.data.tags["lmcsweep.job"] for r in runs if r.data.tags.get("lmcsweep.origin") == "computed"]
    queue = Queue(default_uri(store))
    assert queue.counts("rnd") == {"done": len(computed)}  # every queued job ran, once
    assert len(computed) == len(set(computed)) == 5 * 4      # (train, 2 copies, interpolation) per trial
    trial_runs = {int(r.data.tags["lmcsweep.trial"]): r for r in runs if r.data.tags.get("lmcsweep.kind") == "trial"}
    assert sorted(trial_runs) == [0, 1, 2, 3, 4]
    for t in trials:
        assert t.value == trial_runs[t.number].data.metrics["objective"]
        assert t.user_attrs["mlflow_run_id"] == trial_runs[t.number].info.run_id
        assert (store / "plans" / "rnd" / f"trial-{t.number}" / "plan.json").exists()
    assert [s["state"] for s in slots.slots_of(queue, "rnd")] == ["told"] * 5
    assert slots.open_trials(queue, "rnd") == 0


def _take_all(uri: str, owner: str, start, out) -> None:
    queue = Queue(uri)
    got = []
    start.wait()  # all at once
    try:
        while (slot := slots.take(queue, owner, "race")) is not None:
            got.append(slot["slot"])
            time.sleep(0.003)  # (a worker does something between takes: SQLite's lock changes hands)
    except Exception as exc:  # noqa: BLE001 -- e.g. two processes given the same slot
        got.append(repr(exc))
    out.put(got)


def _race(uri: str) -> None:
    queue = Queue(uri)
    queue.create()
    slots.open_search(queue, "race", 120, {"study": "race-0"})
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_take_all, args=(queue.uri, f"w{i}", start, out)) for i in range(4)]
    for p in procs:
        p.start()
    taken = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [s for got in taken for s in got if isinstance(s, str)]
    assert not errors, errors
    every = sorted(s for got in taken for s in got)
    assert every == list(range(120))               # each slot once, none past the target
    assert sum(bool(got) for got in taken) >= 2     # (they did race)
    assert slots.take(queue, "late", "race") is None
    rows = slots.slots_of(queue, "race")
    assert len(rows) == 120 and {r["owner"] for r in rows} <= {"w0", "w1", "w2", "w3"}
    queue.engine.dispose()  # (PostgreSQL's smart shutdown waits for open connections)


def test_the_slot_counter_never_hands_out_more_slots_than_trials(tmp_path):
    _race(default_uri(tmp_path))


def test_the_slot_counter_on_postgresql(tmp_path):
    import shutil
    import tempfile

    from services import create_db, postgres

    folder = Path(tempfile.mkdtemp(prefix="lmcsweep-pg-"))
    folder.chmod(0o755)
    try:
        with postgres(folder / "pg") as base:
            _race(create_db(base, "queue"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_slot_whose_asker_died_is_taken_over_once(tmp_path):
    queue = Queue(default_uri(tmp_path), lease=2.0)
    queue.create()
    slots.open_search(queue, "dead", 1, {"study": "dead-0"})
    first = slots.take(queue, "dies", "dead")
    slots.asked(queue, "dies", first, 7, "run-7")
    assert slots.take(queue, "other", "dead") is None   # its lease holds: no room, nothing to take over
    time.sleep(2.1)
    again = slots.take(queue, "other", "dead")
    assert again is not None and again["slot"] == first["slot"] and again["trial"] == 7
    assert slots.take(queue, "third", "dead") is None   # taken over once


def test_a_trial_orphaned_between_ask_and_queue_is_replaced_and_a_failed_trial_told_once(tmp_path):
    """Through `worker_trials.next_trial` with the real store, MLflow and Optuna: a slot whose asker
    died after asking is taken over (its trial failed as orphaned, a new one asked and queued); a
    trial whose jobs failed is told FAIL once, its reason in the study."""
    import time

    from lmcsweep.config import load_sweep
    from lmcsweep.run.scheduler import Outcome, Runner
    from lmcsweep.search.study import failure, load_study, orphans
    from lmcsweep.store import Store
    from lmcsweep.worker_trials import next_trial, open_trials

    path = tmp_path / "rnd.yaml"
    path.write_text(RANDOM.replace("trials: 5", "trials: 2"))
    sweep, store = load_sweep(path), Store(tmp_path / "store")
    tracker = Tracker(root=store.root)
    runner = Runner(tracker, store, progress=False)
    experiment_id = tracker.experiment(sweep.experiment)
    queue = Queue(default_uri(store.root), lease=2.0, max_attempts=1)
    queue.create()
    assert open_trials(sweep, runner, queue, experiment_id, Outcome(sweep_run=runner.sweep_run(sweep, experiment_id))) \
        == (2, None)
    slot = slots.take(queue, "dead:1", "rnd")         # a worker asks trial 0, then is killed
    study = load_study(slot["study"], slot["storage"])
    slots.asked(queue, "dead:1", slot, study.ask().number, "none")
    time.sleep(2.1)
    assert next_trial(runner, store, queue, "w:2", "rnd")   # takes the slot over
    assert next_trial(runner, store, queue, "w:2", "rnd")   # the second slot
    assert not next_trial(runner, store, queue, "w:2", "rnd")  # no room, nothing to tell
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {0: "FAIL", 1: "RUNNING", 2: "RUNNING"} and orphans(study) == {0}
    assert [(s["slot"], s["trial"], s["state"]) for s in slots.slots_of(queue, "rnd")] == \
        [(0, 1, "queued"), (1, 2, "queued")]
    assert (store.root / "plans" / "rnd" / "trial-1" / "plan.json").exists()

    first = queue.claim("w:2", sweep="rnd")[0]           # trial 1's first job fails: the rest with it
    assert first["trial"] == 1
    queue.complete("w:2", first, "boom")
    assert next_trial(runner, store, queue, "w:3", "rnd")   # trial 1 told
    assert not next_trial(runner, store, queue, "w:4", "rnd")  # once
    t1 = study.get_trials(deepcopy=False)[1]
    assert t1.state.name == "FAIL" and "boom" in failure(t1, study.user_attrs)
    assert [s["state"] for s in slots.slots_of(queue, "rnd")] == ["told", "queued"]
    assert slots.open_trials(queue, "rnd") == 1


def test_a_search_interrupted_on_workers_goes_on_with_its_trials_under_their_own_numbers(tmp_path):
    """Ctrl-C of the driver while the workers run a random search (its workers are killed with it);
    the rerun goes on with the trials already queued, under their numbers and MLflow runs, asks
    only the trials still missing, and each job is computed once. The display names each job's
    trial and worker as it ends."""
    import os
    import re
    import signal

    from lmcsweep.config import load_sweep
    from lmcsweep.search.study import trial_plans

    path = tmp_path / "rnd.yaml"
    path.write_text(RANDOM.replace("trials: 5", "trials: 4"))
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--workers", "2",
                             "--no-progress", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    first = proc.stderr.readline()                    # a job has ended: interrupt
    assert re.match(r"^\[networks \d+/\d+.*\] computed .+ \(trial \d+\)  \d+\.\ds  on worker \d+", first), first
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    queue = Queue(default_uri(store))
    before = {s["trial"]: s["run_id"] for s in slots.slots_of(queue, "rnd") if s["state"] != "asking"}
    counts = queue.counts("rnd")
    assert before and counts.get("done", 0) < 16  # (the trials queued so far may all have ended already)

    rerun = subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--workers", "2",
                            "--no-progress", path], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    url = f"sqlite:///{store / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    complete = sorted(n for n, t in trials.items() if t.state.name == "COMPLETE")
    assert len(complete) == 4 and all(t.state.name in ("COMPLETE", "FAIL") for t in trials.values())
    for n, run_id in before.items():                  # queued before the interrupt: went on as they were
        assert trials[n].state.name == "COMPLETE" and trials[n].user_attrs["mlflow_run_id"] == run_id
    expected = {p.trial: p.overrides["train.lr"] for p in trial_plans(load_sweep(path), store)}
    assert {n: trials[n].params["train.lr"] for n in complete} == {n: expected[n] for n in complete}
    runs = Tracker(root=store).runs_of_sweep("rnd", status="FINISHED")
    computed = [r.data.tags["lmcsweep.job"] for r in runs if r.data.tags.get("lmcsweep.origin") == "computed"]
    assert len(computed) == len(set(computed)) == 4 * 4   # each job of the 4 trials once
    trial_runs = {int(r.data.tags["lmcsweep.trial"]) for r in runs if r.data.tags.get("lmcsweep.kind") == "trial"}
    assert trial_runs == set(complete)
    assert queue.counts("rnd") == {"done": 16} and slots.open_trials(queue, "rnd") == 0
    assert f"best: trial {study.best_trial.number}" in rerun.stdout, rerun.stdout
    summary = re.search(r"^rnd: (\d+) jobs run, 0 reused from the store, (\d+) already done", rerun.stdout, re.M)
    assert summary and int(summary[1]) + int(summary[2]) == 16 and int(summary[2]) >= counts.get("done", 0), rerun.stdout
    ran = [line for line in rerun.stderr.splitlines() if " computed " in line]
    assert len(ran) == int(summary[1]), rerun.stderr   # a line per job run in the rerun, as it ended


def test_status_shows_the_worker_asking_or_telling_a_trial(tmp_path):
    from lmcsweep.leases import worker_lines
    from lmcsweep.store import Store

    queue = Queue(default_uri(tmp_path))
    queue.create()
    slots.open_search(queue, "rnd", 2, {"study": "rnd-0"})
    queue.register("node1:11")
    queue.register("node1:12")
    slots.take(queue, "node1:11", "rnd")
    told = slots.take(queue, "node1:12", "rnd")
    slots.asked(queue, "node1:12", told, 1, "run-1")
    with queue.transaction() as conn:
        slots.queued(told, "node1:12")(conn)
    assert slots.to_tell(queue, "node1:12", "rnd")["trial"] == 1
    lines = worker_lines(queue, Store(tmp_path), ["rnd"])
    assert lines[1].startswith("node1:11") and lines[1].endswith("asking a trial [rnd]"), lines
    assert lines[2].startswith("node1:12") and lines[2].endswith("telling trial 1 [rnd]"), lines
