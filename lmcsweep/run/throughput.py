"""How fast this store has run a plan's kind of work: measured from the computed, FINISHED runs of
the same network settings (model and its options, data set, batch size, kernel threads, device,
compile, loader; for interpolations also alphas, splits, examples and BatchNorm settings), for
`lmcsweep plan`'s estimate and the progress display's first guess (`run.progress`).

A training run's wall time is its group's (the networks of a wave start together and are marked
FINISHED together), so one network's seconds per iteration is that time times the networks that
trained at once (its group, up to the cores) over the iterations of its group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..config import dataset_of
from ..plan.graph import Plan
from ..plan.specs import Job
from ..tracking import FINISHED, TAG, Tracker, tag
from .bodies import KINDS
from .context import pick_device
from .progress import Costs, Progress
from .runs import job_params
from .together import at_once

NETWORK = ("train.model", "train.model_options", "train.batch_size", "train.cpu_threads", "train.compile",
           "train.precision", "device", "data.dataset", "data.loader")
LATEST = 400  # runs read at most

INTERPOLATION = NETWORK + ("job.alphas", "job.splits", "job.train_examples", "job.subset_test", "job.bn",
                           "job.bn_batches")


@dataclass
class Measured:
    """What the store says about a plan's network: one network's seconds per training iteration
    (training `cores` at once), seconds per interpolation and per prune, and how many runs each
    rests on."""

    network_iteration: float | None
    interpolate: float | None
    prune: float | None
    runs: dict[str, int]
    cores: int

    def costs(self) -> Costs:
        """As the progress display counts: the machine's seconds per iteration (all cores busy)."""
        iteration = self.network_iteration / self.cores if self.network_iteration else None
        return Costs(iteration, self.interpolate, self.prune)


def _key(params: dict[str, Any], keys: tuple[str, ...]) -> tuple:
    return tuple(str(params.get(k)) for k in keys)


def _iterations(run: Any) -> int:
    """The iterations a finished training run trained (from its resume point, if it resumed)."""
    p = run.data.params
    end = int(p.get("job.end") or p.get("train.iterations") or 0)
    start = max(int(p.get("job.rewind") or 0), int(tag(run, "resumed_from") or 0))
    return max(0, end - start)


def measure(tracker: Tracker, plan: Plan) -> Measured:
    """The store's measured costs for `plan`'s network (None where it has no such runs)."""
    cores = at_once(pick_device(plan.sweep.train.device), plan.hyper.cpu_threads, concurrent=not plan.hyper.compile)
    found: dict[str, list[float]] = {"net_seconds": [], "net_iterations": [], "interpolate": [], "prune": []}
    wanted = {}
    for kind, keys in (("train", NETWORK), ("interpolate", INTERPOLATION), ("prune", NETWORK)):
        job = next((j for j in plan.jobs if j.kind == kind), None)
        if job is not None:
            wanted[kind] = _key(job_params(plan, job, {}), keys)
    if not wanted or not tracker.exists():
        return Measured(None, None, None, {}, cores)
    # the latest runs of the preset and data set only (MLflow's order: newest first): loading a run
    # with its params costs ~10 ms, and a large store holds thousands
    where = f"tags.`{TAG}origin` = 'computed' and attributes.status = '{FINISHED}'"
    for key, value in (("preset", plan.sweep.preset), ("dataset", dataset_of(plan.sweep))):
        if value is not None:
            where += f" and tags.`{TAG}{key}` = '{value}'"
    runs = tracker.search(where, max_results=LATEST)
    counts = {"training": 0, "interpolation": 0, "prune": 0}
    for run in runs:
        kind, p = tag(run, "kind"), run.data.params
        seconds = ((run.info.end_time or 0) - (run.info.start_time or 0)) / 1000
        if seconds <= 0:
            continue
        if kind in ("train", "branch") and _key(p, NETWORK) == wanted.get("train"):
            group = int(p.get("train.group") or 1)
            iterations = _iterations(run)
            if iterations:
                found["net_seconds"].append(seconds * min(group, cores))
                found["net_iterations"].append(group * iterations)
                counts["training"] += 1
        elif kind == "interpolate" and _key(p, INTERPOLATION) == wanted.get("interpolate"):
            found["interpolate"].append(seconds)
            counts["interpolation"] += 1
        elif kind == "level" and "prune" in wanted and _key(p, NETWORK) == wanted["prune"]:
            found["prune"].append(seconds)
            counts["prune"] += 1
    net = sum(found["net_seconds"]) / sum(found["net_iterations"]) if found["net_iterations"] else None

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None
    return Measured(net, mean(found["interpolate"]), mean(found["prune"]), counts, cores)


def estimate(measured: Measured, plans: list[Plan], left: set[str], trained: dict[str, int] | None = None
             ) -> dict[str, Any]:
    """Seconds the jobs `left` of `plans` would take at the measured costs: training wave by wave
    (a wave's networks `cores` at a time; `trained`: iterations interrupted jobs have done already),
    interpolations and prunes one after another; a job whose `same_as` twin is planned costs
    nothing. Keys: seconds (None: nothing measured), unmeasured (counts of jobs by kind with no
    measurement)."""
    trained = trained or {}
    planned = {j.hash for p in plans for j in p.jobs}
    waves: dict[int, list[Job]] = {}
    seen: set[str] = set()
    for plan in plans:
        depth: dict[str, int] = {}
        for job in plan.jobs:
            depth[job.hash] = 1 + max((depth[p] for p in job.parents if p in depth), default=-1)
            if job.hash in left and job.hash not in seen and job.same_as not in planned:
                seen.add(job.hash)
                waves.setdefault(depth[job.hash], []).append(job)
    seconds, unmeasured, any_measured = 0.0, {}, False
    for jobs in waves.values():
        nets = [j for j in jobs if KINDS[j.kind].trains and j.iterations > trained.get(j.hash, 0)]
        if nets and measured.network_iteration is not None:
            at_a_time = min(len(nets), measured.cores)
            seconds += sum(j.iterations - trained.get(j.hash, 0) for j in nets) * measured.network_iteration / at_a_time
            any_measured = True
        elif nets:
            unmeasured["networks"] = unmeasured.get("networks", 0) + len(nets)
        for kind, name in (("interpolate", "interpolations"), ("prune", "prunes")):
            n = sum(j.kind == kind for j in jobs)
            cost = getattr(measured, kind)
            if n and cost is not None:
                seconds += n * cost
                any_measured = True
            elif n:
                unmeasured[name] = unmeasured.get(name, 0) + n
    return {"seconds": seconds if any_measured else None, "unmeasured": unmeasured}


def progress_for(tracker: Tracker, plans: list[Plan], done: set[str], label: str, bar: bool,
                 make: Callable[..., Progress] = Progress, like: Plan | None = None) -> Progress:
    """The progress display of running `plans` (jobs in `done` left out): a bar when `bar` (and
    stderr is a terminal), else a line per job; its first guess of the time left from the store
    (measured on `plans[0]`'s networks, or `like`'s when there are no plans yet). `make`: the
    display's class (the workers' driver has its own, `watch.QueueProgress`)."""
    import sys

    from ..plan.graph import summary

    jobs, seen = [], set()
    for plan in plans:
        for job in plan.jobs:
            if job.hash not in done and job.hash not in seen:
                seen.add(job.hash)
                jobs.append(job)
    first = plans[0] if plans else like
    prior = measure(tracker, first).costs() if first is not None else Costs()
    return make(label, jobs, summary(plans, done)["iterations_remaining"], prior, bar=bar and sys.stderr.isatty())


def resumable(store: Any, plans: list[Plan], left: set[str]) -> dict[str, tuple[int, int]]:
    """The networks among `left` that an interrupted run left a resume point: job hash ->
    (iterations trained, iterations in all). Read only (a damaged resume point counts as none)."""
    from ..store import load_verified

    out = {}
    for plan in plans:
        for job in plan.jobs:
            path = store.job_dir(job.hash) / "resume.pt"
            if job.hash not in left or not KINDS[job.kind].trains or job.hash in out or not path.exists():
                continue
            try:
                point = load_verified(path, f"resume point of job {job.hash}")
            except (OSError, ValueError, RuntimeError, KeyError):  # damaged or unreadable: as if none
                continue
            origin = job.spec.rewind if job.kind == "branch" else 0
            out[job.hash] = (min(job.iterations, max(0, int(point["iteration"]) - origin)), job.iterations)
    return out
