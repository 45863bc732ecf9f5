"""A sweep on many workers: the driver plans it into the job queue and starts workers; a worker
claims ready jobs, runs them from their stored specs (`run.scheduler.Runner`, which records each in
its own MLflow run, nested in the sweep's tree) and completes them while it holds their leases.

A worker is `lmcsweep worker`: a process of its own, on this machine (`lmcsweep run --workers N`)
or on any node that sees the store and the queue's database. It claims as many networks of one
kind at a time as its cores train side by side, renews their leases on a heartbeat thread, and
stops when the queue has nothing left for it (or its time limit is reached). A worker with no
ready job asks the next trial of a random/tpe search itself, or tells a trial whose jobs have all
ended (`worker_trials`). A job whose worker was
killed is claimed again once its lease expires and resumes from its resume checkpoint. A tracking
server that stops answering for longer than the retry window (`tracking.patience`) stops the worker
with `TrackingUnavailable`: its jobs go back to the queue unfinished, to resume when it runs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import slots
from .config import SlurmConfig, SweepConfig
from .plan.graph import Plan, plan_from_dict
from .owners import worker_name
from .queue import CLAIMED, DONE, FAILED, WAITING, Queue, QueueError
from .run.context import pick_device
from .run.scheduler import Outcome, Runner
from .run.together import at_once
from .store import Store
from .tracking import RUNNING, TAG, Tracker, TrackingUnavailable
from .worker_trials import next_trial


@dataclass
class WorkerReport:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)   # completed elsewhere: this worker's lease had expired


def work(tracker: Tracker, store: Store, queue: Queue, sweep: str | None = None,
         time_limit: float | None = None, poll: float = 1.0) -> WorkerReport:
    """Claim and run jobs until none is left for this worker (or `time_limit` seconds have passed)."""
    owner, report, started = worker_name(), WorkerReport(), time.time()
    queue.register(owner)
    runner = Runner(tracker, store, progress=False)
    plans: dict[tuple[str, int], Plan] = {}
    while time_limit is None or time.time() - started < time_limit:
        rows = queue.claim(owner, limit=at_once(pick_device("auto")), sweep=sweep)  # what its cores train at once
        if not rows:
            if next_trial(runner, store, queue, owner, sweep):  # a random/tpe trial told or asked
                continue
            if queue.open_work(sweep) == 0 and slots.open_trials(queue, sweep) == 0:
                break
            time.sleep(poll)  # what is left waits for jobs (or trials) other workers hold
            continue
        queue.running(owner, [r["hash"] for r in rows])
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(queue, owner, rows, stop), daemon=True)
        beat.start()
        try:
            outcome = _run_rows(runner, tracker, store, rows, plans)
            down = tracker.unavailable()
        except TrackingUnavailable as exc:
            down = str(exc)
        except QueueError as exc:  # its jobs' plans are not in this store: they go back untried
            queue.release(owner, rows, str(exc))
            queue.unregister(owner)
            raise
        finally:
            stop.set()
            beat.join()
        if down:  # the server stopped answering for longer than the retry window: nothing completes
            queue.release(owner, rows, "tracking server did not answer")
            queue.unregister(owner)
            raise TrackingUnavailable(down)
        for r in rows:
            error = outcome.failed.get(r["hash"])
            if not queue.complete(owner, r, error, _how(outcome, r["hash"])):
                report.lost.append(r["hash"])
            elif error is None:
                report.done.append(r["hash"])
            else:
                report.failed[r["hash"]] = error
        queue.running(owner, [])
    queue.unregister(owner)
    return report


def _how(outcome: Outcome, job: str) -> str:
    """How a job ended, for the queue (the driver's summary): computed, reused from where, or done
    before (an earlier attempt finished its run, then lost its lease)."""
    if job in outcome.reused:
        return f"reused from {outcome.reused_from.get(job, 'the store')}"
    return "done before" if job in outcome.skipped and job not in outcome.computed else "computed"


def _plan(store: Store, plans: dict, sweep: str, trial: int) -> Plan:
    key = (sweep, trial)
    if key not in plans:
        data = store.load_plan(sweep, None if trial < 0 else trial)
        if data is None:
            raise QueueError(f"the queue holds jobs of sweep {sweep!r} but its plan is not in store {store.root}")
        plans[key] = plan_from_dict(data)
    return plans[key]


def _heartbeat(queue: Queue, owner: str, rows: list[dict], stop: threading.Event) -> None:
    while not stop.wait(queue.lease / 3):
        try:
            queue.renew(owner, rows)
        except Exception:  # noqa: BLE001 -- a missed beat: the next one tries again
            pass


def _run_rows(runner: Runner, tracker: Tracker, store: Store, rows: list[dict], plans: dict) -> Outcome:
    """The claimed jobs run together (`Runner.run_plans`: one single-job plan each, nested in its
    tree); their MLflow writes all committed before the queue hears of them."""
    outcome = Outcome()
    by_experiment: dict[str, list] = {}
    for r in rows:
        plan = _plan(store, plans, r["sweep"], r["trial"])
        job = next(j for j in plan.jobs if j.hash == r["hash"])
        if r["attempts"] > 1 or r["errors"]:  # an earlier attempt's run may be left RUNNING
            _kill_stale(tracker, plan.sweep.name, job.hash)
        experiment_id = tracker.experiment(plan.sweep.experiment)
        single = Plan(sweep=plan.sweep, hyper=plan.hyper, jobs=[job], trial=plan.trial,
                      overrides=plan.overrides, study=plan.study)
        by_experiment.setdefault(experiment_id, []).append((single, plan))
    for experiment_id, items in by_experiment.items():
        trees = []
        for single, plan in items:
            root = runner.tree_root(plan, experiment_id)
            if root is None:
                raise QueueError(f"sweep {plan.sweep.name!r} has no MLflow run in store {store.root}: "
                                 "its driver makes it (`lmcsweep run --plan-only FILE`)")
            trees.append((single, root))
        runner.run_plans(trees, experiment_id, outcome, record_plans=False)
    for run_id, message in tracker.write_errors().items():  # waits for every write sent
        job = runner.computed_runs.get(run_id)
        if job is not None:
            outcome.failed[job] = message
    return outcome


def _kill_stale(tracker: Tracker, sweep: str, job: str) -> None:
    """Runs of `job` in `sweep` left RUNNING by a worker that died are marked KILLED."""
    for run in tracker.search(f"tags.`{TAG}sweep` = '{sweep}' and tags.`{TAG}job` = '{job}' "
                              f"and attributes.status = '{RUNNING}'"):
        tracker.finish(run.info.run_id, "KILLED")


# -- the driver ---------------------------------------------------------------------------------
def enqueue(sweep: SweepConfig, runner: Runner, queue: Queue, plan: Plan) -> None:
    """The plan's jobs into the queue (made first, before any worker starts), those already
    FINISHED in the sweep's tree as done."""
    queue.create()
    queue.enqueue(sweep.name, None, [j.to_dict() for j in plan.jobs], set(runner.finished_in_tree(plan)))


def drive(sweep: SweepConfig, store: Store, queue: Queue, workers: int, store_arg: str, tracking_uri: str | None,
          on_poll=None, poll: float = 1.0, slurm: SlurmConfig | None = None,
          gpus: list[str] | None = None) -> dict[str, object]:
    """Start `workers` workers on the queued sweep and wait for them, calling `on_poll()` every
    `poll` seconds (the driver's display): local processes (with `gpus`, `workers` per GPU, each
    seeing its own through CUDA_VISIBLE_DEVICES; their output goes to `<store>/logs/`), or with
    `slurm` (sbatch options, the file's and the command line's) a SLURM job array. Returns the
    queue's counts, the failures (job -> every attempt's error) and how the workers ended
    (`problems`: a line per worker that exited with an error). A Ctrl-C (any exception) stops the
    local workers (SIGKILL) and puts their claims back at once, or cancels the SLURM tasks (their
    claims come back when their leases expire); the jobs resume when the sweep runs again."""
    queue.release_dead(sweep.name)  # claims of workers killed with an earlier driver
    base = [sys.executable, "-m", "lmcsweep.cli", "--store", str(Path(store_arg).resolve())]
    if os.environ.get("LMCSWEEP_TRACKING_RETRY"):  # (set by --tracking-retry too) for workers on other nodes
        base += ["--tracking-retry", os.environ["LMCSWEEP_TRACKING_RETRY"]]
    command = base + ["worker", "--sweep", sweep.name, "--lease", str(queue.lease)]
    # the queue and the tracking server go to the workers in their environment, not on their
    # command line: a password in a URI never shows in `ps` or in submitit's files in the store
    uris = {"LMCSWEEP_QUEUE": queue.uri, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    show = on_poll or (lambda: None)
    problems: list[str] = []
    if slurm is not None:
        from . import slurm as cluster  # submitit: loaded only for a SLURM run

        os.environ.update(uris)  # (sbatch passes the driver's environment on to the tasks)
        jobs = cluster.submit(command, workers, store.root / "slurm", slurm)
        try:
            ended = cluster.wait(jobs, poll, show)
        except BaseException:
            cluster.cancel(jobs)
            raise
    else:
        envs = [{**os.environ, **uris}] * workers if not gpus else \
            [{**os.environ, **uris, "CUDA_VISIBLE_DEVICES": g} for g in gpus for _ in range(workers)]
        logs = store.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        procs, paths = [], []
        for i, env in enumerate(envs):  # (a worker's output would break the driver's display)
            paths.append(logs / f"{sweep.name}.worker-{i}.log")
            with open(paths[-1], "w") as out:
                procs.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True, env=env))
        try:
            while any(p.poll() is None for p in procs):
                show()
                time.sleep(poll)
        except BaseException:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            for p in procs:
                p.wait()
            queue.release_dead(sweep.name)
            raise
        ended = [p.returncode for p in procs]
        for p, path in zip(procs, paths):
            if p.returncode not in (0, 1):  # (1: a job failed, reported by the queue)
                lines = path.read_text(errors="replace").strip().splitlines()
                problems.append(f"worker {p.pid} exited with status {p.returncode}: {lines[-1] if lines else ''} "
                                f"(its output: {path})")
    show()
    counts = queue.counts(sweep.name)
    return {"counts": counts, "failures": queue.failures(sweep.name), "ended": ended,
            "open": counts.get(WAITING, 0) + counts.get(CLAIMED, 0), "done": counts.get(DONE, 0),
            "failed": counts.get(FAILED, 0), "problems": problems}
