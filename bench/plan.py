"""How long `lmcsweep plan` takes on a 1,000-job sweep whose store already holds half of its jobs
(and as many other runs again), against the 5 s the planner promises.

    .venv/bin/python bench/plan.py [--jobs-done 505] [--keep DIR]

Builds the store without training: FINISHED runs with the runner's own tags and params are written
for the first half of the plan's jobs (and for a second, unrelated sweep), then times the CLI in a
fresh process (imports included) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
name: {name}
experiment: bench-plan
preset: lenet
data: {{dataset: fashion_mnist, loader: tensor}}
train: {{iterations: 24000it, batch_size: 60, lr: {lr}}}
replicates: 10
instability:
  rewind: [0it, 25it, 50it, 100it, 200it, 500it, 1000it, 2000it, 5000it, 10000it]
  copies: 4
  alphas: 30
"""


def populate(root: Path, path: Path, done: int) -> int:
    from lmcsweep.config import load_sweep
    from lmcsweep.store import Store
    from lmcsweep.run.bodies import KINDS
    from lmcsweep.run.scheduler import Runner
    from lmcsweep.plan.build import build_plan
    from lmcsweep.tracking import FINISHED, Tracker

    tracker = Tracker(None, root)
    runner = Runner(tracker, Store(root), progress=False)
    sweep = load_sweep(path)
    plan = build_plan(sweep)
    experiment = tracker.experiment(sweep.experiment)
    parent = runner.sweep_run(sweep, experiment)
    for job in plan.jobs[:done]:
        run = tracker.start(experiment, job.name, KINDS[job.kind].run_kind,
                            {**runner._job_tags(plan, job), "origin": "computed"}, parent=parent,
                            params=runner._params(plan, job))
        tracker.log_metrics(run, [("final_test_accuracy", 0.9, 1)])
        tracker.finish(run, FINISHED)
    tracker.finish(parent, FINISHED)
    return len(plan.jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs-done", type=int, default=505)
    ap.add_argument("--keep", default=None, help="build the store here (reused when it exists)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="lmc-plan-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "mlruns"
    target = work / "sweep.yaml"
    target.write_text(SWEEP.format(name="bench-plan", lr=0.0012))
    other = work / "other.yaml"
    other.write_text(SWEEP.format(name="bench-other", lr=0.002))
    if not (store / "mlflow.db").exists():
        t = time.time()
        n = populate(store, target, args.jobs_done)
        populate(store, other, args.jobs_done)
        print(f"store: {2 * args.jobs_done} finished runs written in {time.time() - t:.0f}s; the sweep has {n} jobs")
    cmd = [sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "plan", str(target)]
    t = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.time() - t
    print(out.rstrip())
    print(f"lmcsweep plan, fresh process: {wall:.2f}s (target < 5 s; ratio {wall / 5:.2f})")

    from click.testing import CliRunner

    from lmcsweep.cli import main as cli

    profile = cProfile.Profile()
    t = time.time()
    profile.enable()
    CliRunner().invoke(cli, ["--store", str(store), "plan", str(target)])
    profile.disable()
    print(f"in process (imports done): {time.time() - t:.2f}s; top of the profile:")
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("cumulative").print_stats(12)
    print("\n".join(line for line in buf.getvalue().splitlines() if "lmcsweep" in line or "mlflow" in line))


if __name__ == "__main__":
    main()
