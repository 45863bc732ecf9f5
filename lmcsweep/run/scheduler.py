"""Running plans: look every job up by hash, reuse what is done, hand the rest to an executor in
waves, and record how each ended.

For each job of a plan, wave by wave (`_waves`: parents first; the networks of a wave train together):

1. this sweep's tree already holds a FINISHED run for it -> nothing to do;
2. another sweep (or trial) computed it -> a run recording the reuse is added to this tree, with
   the original's tags and metrics (``lmcsweep.origin=reused``), and nothing is recomputed; the
   same for a job whose `same_as` twin is done (IMP level 0: the dense branches), whose outputs
   are linked into its own place in the store;
3. otherwise the job runs in its own MLflow run (``lmcsweep.origin=computed``), nested under its
   parent job's run, on the executor `executors.choose` picks for its group; a job killed earlier
   resumes from its resume checkpoint.

A job counts as done only while its outputs in the store are as written (`integrity`): one whose
files are damaged or missing runs again, its run tagged ``lmcsweep.repaired`` with what was wrong.

A failing job is marked FAILED (error as tag and artifact); jobs that depend on it are skipped, the
others go on, and the run ends with the failures listed.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from ..config import SweepConfig
from ..data import DataSet
from ..failures import halts
from ..plan.graph import Plan, same_study
from ..plan.specs import Job
from ..store import Store
from ..tracking import FAILED, FINISHED, KILLED, Tracker, tag
from .bodies import KINDS
from .context import Context, Datasets, pick_device, provenance
from .executors import Task, choose
from .integrity import describe, discard, problems
from .runs import job_params, job_tags, open_sweep_run, record_reuse, tree_runs


@dataclass
class Outcome:
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # job hash -> error
    blocked: list[str] = field(default_factory=list)        # not run: a parent failed
    repaired: list[str] = field(default_factory=list)       # done before, outputs damaged: run again
    repaired_why: dict[str, str] = field(default_factory=dict)  # job hash -> its outputs that were not as written
    sweep_run: str | None = None
    seconds: float = 0.0
    backfilled: int = 0    # interpolation runs of earlier revisions given the path metrics (`run.paths`)
    names: dict[str, str] = field(default_factory=dict)        # job hash -> its run's name (and trial)
    reused_from: dict[str, str] = field(default_factory=dict)  # job hash -> where it was computed, in words
    reuses: list[tuple[str, str]] = field(default_factory=list)  # (run name and trial, where it was computed), each reuse
    trials: list[dict[str, Any]] = field(default_factory=list)  # a search's trials (`search.study.study_trials`)
    left: list[str] = field(default_factory=list)   # on workers: still in the queue when they stopped

    def summary(self, name: str) -> str:
        """What a run of sweep `name` did, for `lmcsweep run`."""
        if not self.computed and not self.reused and not self.failed and not self.blocked and not self.left:
            line = f"{name}: nothing to do ({len(self.skipped)} jobs already done)"
        else:
            line = (f"{name}: {len(self.computed)} jobs run, {len(self.reused)} reused from the store, "
                    f"{len(self.skipped)} already done, {len(self.failed)} failed, {len(self.blocked)} blocked"
                    + (f", {len(self.left)} not run (left in the queue)" if self.left else "")
                    + f" ({self.seconds:.0f}s)")
            if self.repaired:
                line += f", {len(self.repaired)} of them repaired (outputs damaged or missing)"
                line += "\n  repaired: " + "; ".join(f"{self.names.get(h, h)} ({self.repaired_why.get(h, '?')})"
                                                  for h in self.repaired[:12])
        if self.backfilled:
            line += f"\n  {self.backfilled} interpolation runs given the path metrics from their checkpoints"
        return line


def _named(tree: "_Tree", job: Job) -> str:
    """A job's run name, with its trial (a job shared by trials has one hash and one name per trial)."""
    return job.name + (f" (trial {tree.plan.trial})" if tree.plan.trial is not None else "")


class Runner:
    """Runs the plans of one sweep against a tracker and a store, from this process."""

    def __init__(self, tracker: Tracker, store: Store, progress: bool = True, retry_failed: bool = False):
        self.tracker, self.store = tracker, store
        self.show_progress, self.retry_failed = progress, retry_failed
        self.provenance = provenance()
        self.computed_runs: dict[str, str] = {}  # run id -> job hash, of the jobs this runner computed
        self.repairs: dict[str, str] = {}  # job hash -> what was wrong with its outputs
        self.datasets = Datasets()

    def dataset(self, sweep: SweepConfig, name: str, background: bool = False) -> DataSet | None:
        """The data set `name` of `sweep`, read once (`Datasets.get`)."""
        return self.datasets.get(sweep, name, background)

    def sweep_run(self, sweep: SweepConfig, experiment_id: str) -> str:
        return open_sweep_run(self.tracker, sweep, experiment_id, self.provenance)

    def finished_in_tree(self, plan: Plan) -> dict[str, str]:
        """The FINISHED runs of `plan`'s tree (its sweep, or its trial of its study), by job hash."""
        return tree_runs(self.tracker, plan.sweep.name, plan.trial, plan.study)["finished"]

    def tree_root(self, plan: Plan, experiment_id: str) -> str | None:
        """The run a plan's tree hangs from: its sweep's run, or its trial's (of its study)."""
        kind = "sweep" if plan.trial is None else "trial"
        for run in self.tracker.runs_of_sweep(plan.sweep.name, kind=kind):
            if run.info.experiment_id != experiment_id:
                continue
            if plan.trial is None or (tag(run, "trial") == str(plan.trial) and same_study(tag(run, "study"), plan.study)):
                return run.info.run_id
        return None

    def context(self, plan: Plan, progress: Any = None) -> Context:
        """The context the jobs of `plan` run with, in this process."""
        ctx = Context(sweep=plan.sweep, hyper=plan.hyper, store=self.store, tracker=self.tracker,
                      device=pick_device(plan.sweep.train.device), data=self.dataset(plan.sweep, plan.hyper.dataset))
        if progress is not None:  # a `progress.Progress`: it locks (networks report from their threads)
            ctx.progress = progress.advance

            def report(event: str, job: str, seconds: float | None = None, error: str | None = None) -> None:
                if event == "start":
                    progress.started(job)
                elif not error:  # a failure is shown once classified (`_run_group`): the store's
                    progress.ended(job, "computed", seconds)  # failing (a full disk) is one line at the end
            ctx.report = report
        return ctx

    # -- running plans -----------------------------------------------------------------------
    def run_plan(self, plan: Plan, experiment_id: str, parent_run: str, outcome: Outcome,
                 progress: Any = None) -> None:
        """Run (or resume) one plan under the MLflow run `parent_run` (the sweep's or a trial's)."""
        self.run_plans([(plan, parent_run)], experiment_id, outcome, progress)

    def run_plans(self, items: list[tuple[Plan, str]], experiment_id: str, outcome: Outcome,
                  progress: Any = None, record_plans: bool = True) -> None:
        """Run several plans (Optuna trials asked together) as one: wave by wave over all of
        them, the networks of a wave training together whatever plan they belong to (when they
        train alike: device, compile, cpu_threads, loader). A job in two of the plans is computed
        once; the other records its reuse."""
        trees = [self._tree(plan, parent_run) for plan, parent_run in items]
        for plan, _ in items if record_plans else []:  # the specs any process runs a job from (`job run`)
            self.store.save_plan(plan.sweep.name, plan.trial, plan.to_dict())
        wanted = [j.hash for t in trees for j in t.plan.jobs if j.hash not in t.finished]
        done_elsewhere = self.tracker.finished_jobs(wanted + [j.same_as for t in trees for j in t.plan.jobs if j.same_as])
        for t in trees:
            t.done.update({h: run.info.run_id for h, run in done_elsewhere.items() if h not in t.done})
        self._check_outputs(trees, done_elsewhere)
        computed: dict[str, str] = {}  # job hash -> its run, for jobs computed by this call
        order = _waves(trees)
        for t, j, _ in order:
            outcome.names.setdefault(j.hash, _named(t, j))
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

        def where(job: Job) -> str:
            """Where a reused job was computed, in words."""
            if job.hash in done_elsewhere:
                run = done_elsewhere[job.hash]
                trial = tag(run, "trial")
                return f"sweep {tag(run, 'sweep')}" + (f" trial {trial}" if trial is not None else "")
            if job.hash in computed:
                return "this run (another trial)"
            return "its dense twin (IMP level 0)"

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
                _tell(progress, job.hash, "blocked", note="a job it needs failed")
                continue
            if job.hash in tree.failed and not self.retry_failed:
                tree.bad.add(job.hash)
                outcome.failed[job.hash] = tree.failed[job.hash]
                _tell(progress, job.hash, "failed", note="failed before (--retry-failed runs it again)")
                continue
            source, tags, extra = original(job), job_tags(plan, job), []
            if source is None and self._twin_done(tree, job):  # IMP level 0: the dense job's result
                source, tags, extra = tree.done[job.same_as], {**tags, "same_as": job.same_as}, _twin_metrics(job)
            if source is not None:
                outcome.reused_from[job.hash] = where(job)
                outcome.reuses.append((_named(tree, job), outcome.reused_from[job.hash]))
                tree.run_of[job.hash] = tree.done[job.hash] = record_reuse(
                    self.tracker, experiment_id, job, tags, tree.parent_of(job), source,
                    job_params(plan, job, self.provenance), extra)
                outcome.reused.append(job.hash)
                _tell(progress, job.hash, "reused", note=f"from {outcome.reused_from[job.hash]}")
                continue
            group = [(tree, job)]
            if KINDS[job.kind].trains:  # every network of its wave trains with it (`executors.pool`)
                hashes, alike = {job.hash}, _alike(plan)
                for t, j in by_wave[wave]:
                    if j.kind == job.kind and j.hash not in hashes and _alike(t.plan) == alike and ready(t, j):
                        group.append((t, j))
                        hashes.add(j.hash)  # a job in two plans trains once; the other reuses it
                group.sort(key=lambda m: -m[1].iterations)  # longest first: the workers finish together
            if progress is not None:
                progress.begin(wave, [j for _, j in group])
            try:
                self._run_group(experiment_id, group, outcome, computed, progress)
            finally:
                if progress is not None:
                    progress.group_done()

    def _run_group(self, experiment_id: str, group: list[tuple["_Tree", Job]], outcome: Outcome,
                   computed: dict[str, str], progress: Any) -> None:
        """Run a job (a prune or interpolation: alone) or the networks of a wave that train together
        (`group`), each in its own MLflow run nested in its tree, on the executor chosen for them,
        and record how each ended: FINISHED, or FAILED with its error (then its children are blocked)."""
        tasks, trees = [], {}
        for t, member in group:
            if t.context is None:
                t.context = self.context(t.plan, progress)
            run_id = self.tracker.start(experiment_id, member.name, KINDS[member.kind].run_kind,
                                        {**job_tags(t.plan, member), "origin": "computed",
                                         "repaired": self.repairs.get(member.hash)},
                                        parent=t.parent_of(member))
            # params go through the background writer, off the training path (flushed before FINISHED)
            t.context.writer.submit(self.tracker.log_params, run_id,
                                    job_params(t.plan, member, self.provenance, len(group)))
            t.run_of[member.hash] = run_id
            t.handled.add(member.hash)
            tasks.append(Task(t.context, member, run_id))
            trees[member.hash] = t
        try:
            errors = choose(tasks[0], KINDS[tasks[0].job.kind].trains).run(tasks)
        except Exception as exc:  # noqa: BLE001 -- any failure of a job is recorded, the sweep goes on
            errors = {task.job.hash: exc for task in tasks}
        stop = None  # the store failed (`failures.halts`): these jobs resume next time, the sweep stops
        for task in tasks:
            member, run_id, t = task.job, task.run_id, trees[task.job.hash]
            exc = errors.get(member.hash)
            if exc is None:
                self.tracker.finish(run_id, FINISHED)
                self.store.clear_resume(member.hash)  # a network's "trained to the end" record
                t.done[member.hash] = computed[member.hash] = run_id
                outcome.computed.append(member.hash)
                if member.hash in self.repairs:
                    outcome.repaired.append(member.hash)
                    outcome.repaired_why[member.hash] = self.repairs[member.hash]
                self.computed_runs[run_id] = member.hash
                _tell(progress, member.hash, "computed")
                continue
            message = f"{type(exc).__name__}: {exc}"
            self.tracker.set_tags(run_id, {"error": message[:5000]})
            self.tracker.log_text(run_id, "".join(traceback.format_exception(exc)), "error.txt")
            if halts(exc):
                self.tracker.finish(run_id, KILLED)
                stop = stop or exc
                continue
            self.tracker.finish(run_id, FAILED)
            outcome.failed[member.hash] = message
            t.bad.add(member.hash)
            _tell(progress, member.hash, "failed", note=message[:200])
        if stop is not None:
            raise stop

    def _check_outputs(self, trees: list["_Tree"], done_elsewhere: dict[str, Any]) -> None:
        """Verify the outputs of every job done (here or elsewhere): one whose files are damaged or
        missing is not done, and runs again (its damaged files removed first)."""
        for t in trees:
            for job in t.plan.jobs:
                if job.hash not in t.finished and job.hash not in done_elsewhere:
                    continue
                found = problems(self.store, t.plan, job)
                if not found:
                    continue
                self.repairs[job.hash] = describe(found)
                discard(self.store, t.plan, job, found)
                for known in (t.finished, t.done, done_elsewhere):
                    known.pop(job.hash, None)

    def _tree(self, plan: Plan, parent_run: str) -> "_Tree":
        runs = tree_runs(self.tracker, plan.sweep.name, plan.trial, plan.study)
        return _Tree(plan, parent_run, runs["finished"], runs["failed"], dict(runs["finished"]),
                     dict(runs["finished"]))

    def _twin_done(self, tree: "_Tree", job: Job) -> bool:
        """Whether `job` can be reused from its `same_as` twin: the twin finished, and (a branch) its
        final checkpoint is now this job's too (hard-linked in the store)."""
        if job.same_as is None or job.same_as not in tree.done:
            return False
        if job.kind == "branch":
            return self.store.share_checkpoint(job.same_as, job.hash, job.spec.end)
        return True


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


def _tell(progress: Any, job: str, how: str, note: str = "") -> None:
    if progress is not None:
        progress.ended(job, how, note=note)


def _alike(plan: Plan) -> tuple:
    """What networks that train side by side must share (`executors.pool` takes them from one)."""
    h = plan.hyper
    return (plan.sweep.train.device, h.compile, h.cpu_threads, plan.sweep.data.loader)


def _twin_metrics(job: Job) -> list[tuple[str, float, int]]:
    """What a job logs beyond its `same_as` twin: an IMP level-0 branch, its (full) mask's density."""
    return [("density", 1.0, job.spec.rewind)] if job.kind == "branch" and job.spec.mask else []
