"""What `lmcsweep run` shows while it runs: what is running now, how many networks, interpolations
and prunes are done of how many, and the time left.

Two forms, one object (`Progress`):

- on a terminal: one bar over the work left (training iterations, plus each interpolation and
  prune weighted as the iterations it costs: `Costs.weight`), described by the wave and the jobs
  running now (``wave 1: branch rep 0 k=20 copy 0, copy 1 +2``) and followed by the counts and the
  time left;
- otherwise (stderr not a terminal, or `--no-progress`): one line per job as it ends: how it ended
  (computed, reused, failed, blocked), its kind, name and time, and the counts so far.

The time left comes from measured throughput (`Costs`): the store's earlier runs of the same
network (`run.throughput`) until this run has measured its own; this run's are cumulative (the
training iterations over the time spent training, the mean time of an interpolation), so the
estimate settles instead of swinging with each step.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from ..plan.specs import Job
from .bodies import KINDS


@dataclass
class Costs:
    """Seconds per unit of work on this machine: per training iteration (the machine's, networks
    training side by side), per interpolation, per prune (None: not measured)."""

    iteration: float | None = None
    interpolate: float | None = None
    prune: float | None = None

    def of(self, kind: str) -> float | None:
        return self.iteration if KINDS[kind].trains else getattr(self, kind, None)

    def weight(self, kind: str) -> float:
        """A non-training job in training iterations (for the bar; 1 when unknown)."""
        if self.iteration and self.of(kind):
            return max(1.0, self.of(kind) / self.iteration)
        return 1.0


def clock(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


GROUPS = (("networks", lambda kind: KINDS[kind].trains), ("interpolations", lambda kind: kind == "interpolate"),
          ("prunes", lambda kind: kind == "prune"))


def group_of(kind: str) -> str:
    return next(name for name, match in GROUPS if match(kind))


class Progress:
    """The display of one `Runner.run_plans` call: `begin` a group of jobs, `started`/`advance`/
    `ended` from the executors (any thread), `close` at the end. `jobs`: the jobs it will run or
    reuse (not those already done); `prior`: the store's measured costs."""

    def __init__(self, label: str, jobs: list[Job], iterations: int, prior: Costs, bar: bool | None = None,
                 stream: TextIO | None = None):
        self.label, self.stream = label, stream or sys.stderr
        self.jobs = {j.hash: j for j in jobs}
        self.total = {name: 0 for name, _ in GROUPS}
        for j in jobs:
            self.total[group_of(j.kind)] += 1
        self.done = {name: 0 for name, _ in GROUPS}
        self.prior, self.iterations_total = prior, iterations
        self.iterations_done, self.training_seconds, self.interpolations, self.prunes = 0, 0.0, [], []
        self.iterations_skipped = 0  # of networks reused, failed or blocked: not to be trained
        self.started_at = time.monotonic()
        self.training_since: float | None = None   # when the training group now running began
        self.wave, self.running, self.ends = 0, [], {}  # job hash -> how it ended (printed)
        self.lock = threading.Lock()
        self.bar, self.want_bar = None, self.stream.isatty() if bar is None else bar
        if self.want_bar and (iterations or jobs):
            self._open_bar()

    def _open_bar(self) -> None:
        self.weights = {k: self.prior.weight(k) for k in ("interpolate", "prune")}
        work = self.iterations_total + sum(self.weights.get(j.kind, 0) for j in self.jobs.values()
                                           if not KINDS[j.kind].trains)
        self.bar = _bar()(total=round(work), file=self.stream, dynamic_ncols=True, mininterval=0.5, leave=True,
                          bar_format="{desc} {percentage:3.0f}%|{bar}| {text}")
        self._show()

    def more(self, jobs: list[Job], iterations: int) -> None:
        """Jobs to run added while it runs (a search's trials, as the workers ask them), with the
        iterations they train."""
        with self.lock:
            new = [j for j in jobs if j.hash not in self.jobs]
            for j in new:
                self.jobs[j.hash] = j
                self.total[group_of(j.kind)] += 1
            self.iterations_total += iterations
            if self.bar is None and self.want_bar and self.jobs:
                self._open_bar()
            elif self.bar is not None:
                self.bar.total += round(iterations + sum(self.weights.get(j.kind, 0) for j in new
                                                         if not KINDS[j.kind].trains))
                self._show()

    # -- events -------------------------------------------------------------------------------
    def begin(self, wave: int, jobs: list[Job]) -> None:
        """The scheduler hands `jobs` (one group: a wave's networks, or one prune or interpolation)
        to an executor."""
        with self.lock:
            self.wave = wave
            if jobs and KINDS[jobs[0].kind].trains:
                self.training_since = time.monotonic()
            if jobs and not KINDS[jobs[0].kind].trains:
                self.running = [j.hash for j in jobs]
            self._show()

    def started(self, job_hash: str) -> None:
        with self.lock:
            if job_hash not in self.running:
                self.running.append(job_hash)
            self._show()

    def advance(self, iterations: int) -> None:
        with self.lock:
            self.iterations_done += iterations
            if self.bar is not None:
                self.bar.update(iterations)
                self._show(refresh=False)

    def ended(self, job_hash: str, how: str, seconds: float | None = None, note: str = "") -> None:
        """Job `job_hash` ended: computed, reused, failed or blocked (a job's line is printed once,
        again only if how it ended changes: its writes failed after its body ended)."""
        with self.lock:
            job = self.jobs.get(job_hash)
            if job is None or self.ends.get(job_hash) == how:
                return
            first = job_hash not in self.ends
            self.ends[job_hash] = how
            if job_hash in self.running:
                self.running.remove(job_hash)
            if first:
                self.done[group_of(job.kind)] += 1
                if how == "computed" and seconds is not None and job.kind in ("interpolate", "prune"):
                    (self.interpolations if job.kind == "interpolate" else self.prunes).append(seconds)
                skipped = job.iterations if KINDS[job.kind].trains and how != "computed" and not job.same_as else 0
                self.iterations_skipped += skipped  # a network not trained here: its iterations are not to come
                if self.bar is not None and not KINDS[job.kind].trains:
                    self._reweight(job.kind)
                    self.bar.update(round(self.weights[job.kind]))
                elif self.bar is not None and skipped:
                    self.bar.update(min(skipped, self.bar.total - self.bar.n))
            line = (f"[{self._counts()}] {how:<8} {job.name}" + (f" (trial {job.trial})" if job.trial is not None else "")
                    + (f"  {seconds:.1f}s" if seconds is not None else "") + (f"  {note}" if note else ""))
            if self.bar is not None:
                if how in ("failed", "blocked"):
                    self.bar.write(line, file=self.stream)
                self._show()
            else:
                eta = self.eta()
                print(line + (f"  (left: {eta})" if eta and eta != "0s" and how == "computed" else ""), file=self.stream, flush=True)

    def group_done(self) -> None:
        """The group the scheduler handed over has ended."""
        with self.lock:
            if self.training_since is not None:
                self.training_seconds += time.monotonic() - self.training_since
                self.training_since = None
            self.running = []
            self._show()

    def close(self) -> None:
        if self.bar is not None:
            self._show()
            self.bar.close()
            self.bar = None

    def _reweight(self, kind: str) -> None:
        """The first measurement of an interpolation's (prune's) cost, where the store had none:
        the bar counts the ones left at it from now on."""
        cost = self.rates()
        if getattr(self.prior, kind) is not None or not cost.iteration or cost.of(kind) is None:
            return
        weight = cost.weight(kind)
        left = sum(1 for h, j in self.jobs.items() if j.kind == kind and h not in self.ends)
        self.bar.total = round(self.bar.total + left * (weight - self.weights[kind]) + weight - self.weights[kind])
        self.weights[kind] = weight

    # -- what is shown --------------------------------------------------------------------------
    def rates(self) -> Costs:
        """Costs measured by this run, else the store's (`prior`): cumulative, so they settle."""
        trained = self.training_seconds + (time.monotonic() - self.training_since if self.training_since else 0.0)
        iteration = trained / self.iterations_done if self.iterations_done and trained > 2.0 else self.prior.iteration
        interpolate = sum(self.interpolations) / len(self.interpolations) if self.interpolations else self.prior.interpolate
        prune = sum(self.prunes) / len(self.prunes) if self.prunes else self.prior.prune
        return Costs(iteration, interpolate, prune)

    def eta(self) -> str:
        """The time left, e.g. ``3m05s``; with the part not yet measured named (``40s + 4
        interpolations``, or ``2 interpolations`` when only they are left); "" when nothing is measured."""
        c = self.rates()
        seconds, unknown = 0.0, []
        left_iterations = max(0, self.iterations_total - self.iterations_done - self.iterations_skipped)
        if left_iterations:
            if c.iteration is None:
                unknown.append(f"{left_iterations} iterations")
            else:
                seconds += left_iterations * c.iteration
        for name, cost in (("interpolations", c.interpolate), ("prunes", c.prune)):
            left = self.total[name] - self.done[name]
            if left and cost is None:
                unknown.append(f"{left} {name if left > 1 else name[:-1]}")
            elif left:
                seconds += left * cost
        if unknown and not seconds:
            measured = any(x is not None for x in (c.iteration, c.interpolate, c.prune))
            return " + ".join(unknown) if measured else ""
        return clock(seconds) + "".join(f" + {u}" for u in unknown)

    def _counts(self) -> str:
        return ", ".join(f"{name} {self.done[name]}/{self.total[name]}" for name, _ in GROUPS if self.total[name])

    def describe(self) -> str:
        """What runs now: ``small wave 1: branch rep 0 k=0 copy 0, copy 1 +2``."""
        names = [self.jobs[h].name for h in self.running if h in self.jobs]
        now = (names[0] + "".join(f", {n.rsplit(' ', 2)[-2] + ' ' + n.rsplit(' ', 1)[-1]}" for n in names[1:2])
               + (f" +{len(names) - 2}" if len(names) > 2 else "")) if names else "-"
        return f"{self.label} wave {self.wave}: {now}"

    def _show(self, refresh: bool = True) -> None:
        if self.bar is None:
            return
        self.bar.set_description_str(self.describe(), refresh=False)
        eta = self.eta()
        self.bar.text = f"{self._counts()}, {clock(time.monotonic() - self.started_at)}" + (f" < {eta} left" if eta and eta != "0s" else "")
        if refresh:
            self.bar.refresh()


def _bar():
    """tqdm with a field `text` for its bar_format (tqdm's documented way: a `format_dict` override)."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        text = ""

        @property
        def format_dict(self):
            return {**super().format_dict, "text": self.text}
    return Bar
