"""Running a plan: look every job up by hash, reuse what is done, run the rest in order, track it.

For each job of a plan, wave by wave (`_waves`: parents first; the networks of a wave train together):

1. this sweep's tree already holds a FINISHED run for it -> nothing to do;
2. another sweep (or trial) computed it -> a run recording the reuse is added to this tree, with
   the original's tags and metrics (``lmcsweep.origin=reused``), and nothing is recomputed; the
   same for a job whose `same_as` twin is done (IMP level 0: the dense branches), whose outputs
   are linked into its own place in the store;
3. otherwise the job runs in its own MLflow run (``lmcsweep.origin=computed``), nested under its
   parent job's run; a job killed earlier resumes from its resume checkpoint.

A failing job is marked FAILED (error as tag and artifact); jobs that depend on it are skipped, the
others go on, and the run ends with the failures listed.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import subprocess
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import SweepConfig, dataset_of
from ..data import load_dataset
from ..identity import canonical, job_hash, sweep_fingerprint
from ..store import Store
from ..tracking import FAILED, FINISHED, Tracker, tag
from ..plan.graph import Job, Plan, branch_end, same_study
from .bodies import BODIES, Context, run_branches, run_trains


@dataclass
class Outcome:
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # job hash -> error
    blocked: list[str] = field(default_factory=list)        # not run: a parent failed
    sweep_run: str | None = None
    seconds: float = 0.0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def provenance() -> dict[str, str]:
    """Git commit and package versions, recorded on every run."""
    out = {}
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    for pkg in ("lmcsweep", "torch", "torchvision", "mlflow", "optuna", "ffcv", "numpy"):
        try:
            out[f"version.{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class SweepBusy(RuntimeError):
    """Another runner holds the sweep's lock."""


@contextmanager
def sweep_lock(store: Store, name: str) -> Iterator[None]:
    """One runner per sweep and store at a time (so RUNNING runs left behind are known to be dead)."""
    path = store.root / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepBusy(f"sweep {name!r} is already running against this store (lock {path} is held)") from None
        yield


class Runner:
    """Runs the plans of one sweep against a tracker and a store, in this process."""

    def __init__(self, tracker: Tracker, store: Store, progress: bool = True, retry_failed: bool = False):
        self.tracker, self.store = tracker, store
        self.show_progress, self.retry_failed = progress, retry_failed
        self._prov = provenance()
        self.computed_runs: dict[str, str] = {}  # run id -> job hash, of the jobs this runner computed
        self._data: dict[tuple, tuple[threading.Thread, dict[str, Any]]] = {}

    # -- the sweep and trial runs -----------------------------------------------------------
    def sweep_run(self, sweep: SweepConfig, experiment_id: str) -> str:
        runs = self.tracker.runs_of_sweep(sweep.name, kind="sweep")
        runs = [r for r in runs if r.info.experiment_id == experiment_id]
        fingerprint = sweep_fingerprint(sweep)
        digest = job_hash("sweep", fingerprint)
        if runs:
            run = runs[0]
            if tag(run, "job") != digest:
                self.tracker.set_tags(run.info.run_id, {"job": digest})
                self.tracker.log_dict(run.info.run_id, fingerprint, f"config-{digest}.json")
            self.tracker.reopen(run.info.run_id)
            return run.info.run_id
        run_id = self.tracker.start(experiment_id, sweep.name, "sweep", self._tags(sweep, {"job": digest}),
                                    params={**self._prov, "replicates": sweep.replicates, "seed": sweep.seed})
        self.tracker.log_dict(run_id, fingerprint, "config.json")
        return run_id

    def _tags(self, sweep: SweepConfig, extra: dict[str, Any]) -> dict[str, Any]:
        return {"sweep": sweep.name, "preset": sweep.preset, "dataset": dataset_of(sweep), **extra}

    # -- running plans -----------------------------------------------------------------------
    def run_plan(self, plan: Plan, experiment_id: str, parent_run: str, outcome: Outcome,
                 progress: Any = None) -> None:
        """Run (or resume) one plan under the MLflow run `parent_run` (the sweep's or a trial's)."""
        self.run_plans([(plan, parent_run)], experiment_id, outcome, progress)

    def run_plans(self, items: list[tuple[Plan, str]], experiment_id: str, outcome: Outcome,
                  progress: Any = None) -> None:
        """Run several plans (Optuna trials asked together) as one: wave by wave over all of
        them, the networks of a wave training together whatever plan they belong to (when they
        train alike: device, compile, cpu_threads, loader). A job in two of the plans is computed
        once; the other records its reuse."""
        trees = [self._tree(plan, parent_run) for plan, parent_run in items]
        wanted = [j.hash for t in trees for j in t.plan.jobs if j.hash not in t.finished]
        done_elsewhere = self.tracker.finished_jobs(wanted + [j.same_as for t in trees for j in t.plan.jobs if j.same_as])
        for t in trees:
            t.done.update({h: run.info.run_id for h, run in done_elsewhere.items() if h not in t.done})
        computed: dict[str, str] = {}  # job hash -> its run, for jobs computed by this call
        order = _waves(trees)
        by_wave: dict[int, list[tuple[_Tree, Job]]] = {}
        for t, j, w in order:
            by_wave.setdefault(w, []).append((t, j))

        def original(job: Job) -> str | None:
            """The run of a job computed elsewhere (another sweep, trial or plan of this call)."""
            return done_elsewhere[job.hash].info.run_id if job.hash in done_elsewhere else computed.get(job.hash)

        def ready(t: _Tree, job: Job) -> bool:
            """Whether `job` of tree `t` would be run now (not done, reused, failed or blocked)."""
            return (job.hash not in t.handled and job.hash not in t.finished and original(job) is None
                    and not any(p in t.bad for p in job.parents)
                    and (job.hash not in t.failed or self.retry_failed) and not self._twin_done(t, job))

        for tree, job, wave in order:
            plan = tree.plan
            if job.hash in tree.handled:
                continue
            tree.handled.add(job.hash)
            if job.hash in tree.finished:
                outcome.skipped.append(job.hash)
                continue
            if any(p in tree.bad for p in job.parents):
                tree.bad.add(job.hash)
                outcome.blocked.append(job.hash)
                continue
            if job.hash in tree.failed and not self.retry_failed:
                tree.bad.add(job.hash)
                outcome.failed[job.hash] = tree.failed[job.hash]
                continue
            source, tags, extra = original(job), self._job_tags(plan, job), []
            if source is None and self._twin_done(tree, job):  # IMP level 0: the dense job's result
                source, tags, extra = tree.done[job.same_as], {**tags, "same_as": job.same_as}, _twin_metrics(job)
            if source is not None:
                tree.run_of[job.hash] = tree.done[job.hash] = self._record_reuse(
                    experiment_id, job, tags, tree.parent_of(job), source, self._params(plan, job), extra)
                outcome.reused.append(job.hash)
                continue
            group = [(tree, job)]
            if job.kind in ("branch", "train"):  # every network of its wave trains with it (`copies.together`)
                hashes, alike = {job.hash}, _alike(plan)
                for t, j in by_wave[wave]:
                    if j.kind == job.kind and j.hash not in hashes and _alike(t.plan) == alike and ready(t, j):
                        group.append((t, j))
                        hashes.add(j.hash)  # a job in two plans trains once; the other reuses it
                group.sort(key=lambda m: -m[1].iterations)  # longest first: the workers finish together
            self._run_group(experiment_id, job, group, outcome, computed, progress)

    def _run_group(self, experiment_id: str, job: Job, group: list[tuple["_Tree", Job]], outcome: Outcome,
                   computed: dict[str, str], progress: Any) -> None:
        """Run `job` (a prune or interpolation: alone) or the networks of its wave that train with it
        (`group`, itself among them), each in its own MLflow run nested in its tree, and record how
        each ended: FINISHED, or FAILED with its error (then its children are blocked)."""
        members = []
        for t, member in group:
            ctx = self._tree_context(t, progress)
            run_id = self.tracker.start(experiment_id, member.name, _mlflow_kind(member),
                                        {**self._job_tags(t.plan, member), "origin": "computed"},
                                        parent=t.parent_of(member))
            # params go through the background writer, off the training path (flushed before FINISHED)
            ctx.writer.submit(self.tracker.log_params, run_id, self._params(t.plan, member, len(group)))
            t.run_of[member.hash] = run_id
            t.handled.add(member.hash)
            members.append((t, member, run_id))
        if progress is not None:
            progress.set_description(f"{group[0][0].plan.sweep.name}: {job.name}"
                                     + (f" +{len(group) - 1}" if len(group) > 1 else ""))
        runs = [(t.context, member, run_id) for t, member, run_id in members]
        errors: dict[str, BaseException] = {}
        try:
            if job.kind == "branch":
                errors = run_branches(runs)
            elif job.kind == "train":  # the dense networks of all replicates
                errors = run_trains(runs)
            else:
                BODIES[job.kind](runs[0][0], job, runs[0][2])
        except Exception as exc:  # noqa: BLE001 -- any failure of a job is recorded, the sweep goes on
            errors = {member.hash: exc for _, member, _ in members}
        for ctx in {id(t.context): t.context for t, _, _ in members}.values():
            try:
                ctx.writer.flush()
            except Exception as exc:  # noqa: BLE001 -- params or metrics could not be written
                errors = {m.hash: exc for t, m, _ in members if t.context is ctx} | errors
        for t, member, run_id in members:
            exc = errors.get(member.hash)
            if exc is None:
                self.tracker.finish(run_id, FINISHED)
                self.store.clear_resume(member.hash)  # a network's "trained to the end" record
                t.done[member.hash] = computed[member.hash] = run_id
                outcome.computed.append(member.hash)
                self.computed_runs[run_id] = member.hash
                continue
            message = f"{type(exc).__name__}: {exc}"
            self.tracker.set_tags(run_id, {"error": message[:5000]})
            self.tracker.log_text(run_id, "".join(traceback.format_exception(exc)), "error.txt")
            self.tracker.finish(run_id, FAILED)
            outcome.failed[member.hash] = message
            t.bad.add(member.hash)
        if progress is not None:
            progress.update(0)

    def _tree(self, plan: Plan, parent_run: str) -> "_Tree":
        runs = self._tree_runs(plan.sweep, plan.trial, plan.study)
        return _Tree(plan, parent_run, runs["finished"], runs["failed"], dict(runs["finished"]),
                     dict(runs["finished"]))

    def _tree_context(self, tree: "_Tree", progress: Any) -> Context:
        if tree.context is None:
            tree.context = self._context(tree.plan, tree.plan.by_hash(), progress)
        return tree.context

    def _tree_runs(self, sweep: SweepConfig, trial: int | None, study: str | None = None) -> dict[str, dict[str, str]]:
        """This sweep's (trial's) runs by job hash: finished, and failed. A trial's are those of its
        study: trial n of an earlier study of an edited search is another trial."""
        finished, failed = {}, {}
        for run in self.tracker.runs_of_sweep(sweep.name):
            if tag(run, "trial") != (None if trial is None else str(trial)):
                continue
            if not same_study(tag(run, "study"), study):
                continue
            job = tag(run, "job")
            if not job:
                continue
            if run.info.status == FINISHED:
                finished[job] = run.info.run_id
            elif run.info.status == FAILED:
                failed[job] = tag(run, "error", "failed")
        return {"finished": finished, "failed": {j: e for j, e in failed.items() if j not in finished}}

    def _context(self, plan: Plan, jobs: dict[str, Job], progress: Any) -> Context:
        sweep, hyper = plan.sweep, plan.hyper
        data = self.dataset(sweep, hyper.dataset)
        device = pick_device(sweep.train.device)
        lock = threading.Lock()  # copies training side by side report progress from their threads

        def update(n: int) -> None:
            if progress is not None:
                with lock:
                    progress.update(n)
        return Context(sweep=sweep, hyper=hyper, store=self.store, tracker=self.tracker, device=device,
                       data=data, jobs=jobs, progress=update)

    def dataset(self, sweep: SweepConfig, name: str, background: bool = False):
        """The data set of `sweep` (its `name`: an Optuna variant may not change it), read once; with
        `background`, only start reading it, on a thread (reading files and decompressing leave the
        GIL free), so it is ready when the first job needs it (not when it may have to download)."""
        d = sweep.data
        synthetic = d.synthetic.model_dump() if d.synthetic else None
        key = (name, d.root, d.download, d.subset_train, d.subset_test, canonical(synthetic))
        if background and (d.download or key in self._data):
            return None
        if key not in self._data:
            box: dict[str, Any] = {}

            def read() -> None:
                try:
                    box["data"] = load_dataset(name, root=d.root, download=d.download, subset_train=d.subset_train,
                                               subset_test=d.subset_test, synthetic=synthetic)
                except BaseException as exc:  # noqa: BLE001 -- raised where the data is needed
                    box["error"] = exc
            thread = threading.Thread(target=read, name="lmcsweep-data", daemon=True)
            thread.start()
            self._data[key] = (thread, box)
        thread, box = self._data[key]
        if background:
            return None
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["data"]

    def _job_tags(self, plan: Plan, job: Job) -> dict[str, Any]:
        t = {k: v for k, v in job.tags.items() if v is not None}
        t["job"] = job.hash
        if plan.trial is not None:
            t["trial"] = plan.trial
        if plan.study is not None:
            t["study"] = plan.study
        return self._tags(plan.sweep, t)

    def _params(self, plan: Plan, job: Job, group: int = 1) -> dict[str, Any]:
        h = plan.hyper
        params = {f"train.{k}": v for k, v in h.__dict__.items()}
        device = pick_device(plan.sweep.train.device)
        if job.kind in ("branch", "train"):  # networks trained with it (side by side on CPU; not in its identity)
            params["train.group"] = group if device.type == "cpu" and not h.compile else 1
        params.update({f"data.{k}": v for k, v in plan.sweep.data.model_dump(mode="json").items() if v is not None})
        params.update(self._prov)
        params["device"] = str(device)
        params["torch_threads"] = torch.get_num_threads()  # evaluation's; training's is train.cpu_threads
        params.update({f"hp.{k}": v for k, v in plan.overrides.items()})
        for key, value in job.fields.items():
            if key == "seeds":
                params.update({f"seed.{k}": v for k, v in value.items()})
            elif key not in ("hyper", "data"):
                params[f"job.{key}"] = canonical(value) if isinstance(value, (dict, list)) else value
        if plan.sweep.instability is not None:
            inst = plan.sweep.instability
            params.update({"instability.optimizer": inst.optimizer, "instability.schedule": inst.schedule,
                           "instability.pairs": inst.pairs, "instability.bn": inst.bn,
                           "instability.noise": ",".join(inst.noise)})
        return params

    def _twin_done(self, tree: "_Tree", job: Job) -> bool:
        """Whether `job` can be reused from its `same_as` twin: the twin finished, and (a branch) its
        final checkpoint is now this job's too (hard-linked in the store)."""
        if job.same_as is None or job.same_as not in tree.done:
            return False
        if job.kind == "branch":
            return self.store.share_checkpoint(job.same_as, job.hash, branch_end(tree.plan.hyper, job.fields))
        return True

    def _record_reuse(self, experiment_id: str, job: Job, tags: dict[str, Any], parent: str, original: str,
                      params: dict[str, Any], extra: list[tuple[str, float, int]] = ()) -> str:
        """A run in this tree standing for a job computed elsewhere (run `original`): its metrics
        (and `extra` ones), nothing recomputed."""
        run_id = self.tracker.start(experiment_id, job.name, _mlflow_kind(job),
                                    {**tags, "origin": "reused", "reused_from": original}, parent=parent, params=params)
        self.tracker.log_metrics(run_id, self.tracker.metric_history(original) + list(extra))
        self.tracker.finish(run_id, FINISHED)
        return run_id


@dataclass
class _Tree:
    """One plan's place in a run: its parent MLflow run, what its tree holds, and what is known of
    its jobs as they run (all by job hash)."""

    plan: Plan
    parent_run: str
    finished: dict[str, str]         # FINISHED runs in this tree when the run began
    failed: dict[str, str]           # FAILED ones: their errors
    run_of: dict[str, str]           # the run of each job in this tree (for nesting)
    done: dict[str, str]             # FINISHED runs of its jobs and twins, here or elsewhere
    bad: set[str] = field(default_factory=set)       # failed or blocked: their children are blocked
    handled: set[str] = field(default_factory=set)   # seen by the loop (or run in a wave's group)
    context: Context | None = None

    def parent_of(self, job: Job) -> str:
        return self.run_of.get(job.tree_parent, self.parent_run) if job.tree_parent else self.parent_run


def _waves(trees: list[_Tree]) -> list[tuple[_Tree, Job, int]]:
    """The jobs of all trees in the order they run, each with its wave: a job's wave is one past
    its latest parent's (the dense networks are wave 0), and the jobs run wave by wave, plan by
    plan and in plan order within one. The networks of a wave need only earlier waves, so they all
    train together: the copies of every replicate and rewind point, at every IMP level the
    subnetworks and controls of all chains, and those of every plan (trial) run together, which
    keeps every core busy where one chain's copies could not."""
    out = []
    for n, tree in enumerate(trees):
        depth: dict[str, int] = {}
        for i, job in enumerate(tree.plan.jobs):  # parents first
            depth[job.hash] = 1 + max((depth[p] for p in job.parents if p in depth), default=-1)
            out.append((depth[job.hash], n, i, tree, job))
    out.sort(key=lambda row: row[:3])
    return [(tree, job, wave) for wave, _, _, tree, job in out]


def _alike(plan: Plan) -> tuple:
    """What networks that train side by side must share (`copies.together` takes them from one)."""
    h = plan.hyper
    return (plan.sweep.train.device, h.compile, h.cpu_threads, plan.sweep.data.loader)


def _twin_metrics(job: Job) -> list[tuple[str, float, int]]:
    """What a job logs beyond its `same_as` twin: an IMP level-0 branch, its (full) mask's density."""
    return [("density", 1.0, job.fields["rewind"])] if job.kind == "branch" and job.fields["mask"] else []


def _mlflow_kind(job: Job) -> str:
    return "level" if job.kind == "prune" else job.kind
