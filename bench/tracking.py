"""The time a run's own process spends on MLflow, three ways: the tracking process
(`TrackingProcess`, what `lmcsweep run` uses), a `Tracker` in-process with MlflowClient's
synchronous calls, and a `Tracker` in-process with MLflow's own asynchronous logging
(``MlflowClient.log_batch(..., synchronous=False)``, whose `RunOperations` are waited on before a
run's finish, before a query and at the end, so errors still reach their run).

The workload is what a quickstart-sized sweep asks of tracking: 14 runs under a sweep run, each
started with tags, ~60 params, 300 metrics in 4 batches, a tag update, a JSON artifact and a
finish, with `--work` seconds of CPU work (a busy loop standing in for training) between a run's
start and its metrics; plus the queries a run makes (done jobs before and after, the sweep's runs). Each
measurement is a fresh process on a fresh SQLite store (the empty-store template already cached,
as after a first run), timed from the top of the process, before lmcsweep or mlflow is imported,
to every write committed, and the part of it spent inside tracker calls (blocked: what training
waits for). `+torch`: the process imports torch right after making its tracker, as `lmcsweep run`
does (the helper imports mlflow meanwhile); `--without-torch` adds the cases without it.
Interleaved, median of repeats.

    .venv/bin/python bench/tracking.py [--repeats 5] [--runs 14] [--work 0.2] [--without-torch]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before anything else is imported: the child's clock starts here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODES = ("process", "sync", "async")
LABELS = {"process": "tracking process", "sync": "in-process, synchronous", "async": "in-process, MLflow async"}


def async_tracker(root: str):
    """A `Tracker` whose params, tags and metrics go through MLflow's asynchronous logging."""
    from lmcsweep.tracking import TAG, Tracker

    class AsyncTracker(Tracker):
        def __init__(self, root):
            super().__init__(root=root)
            self.pending: dict[str, list] = {}

        def _batch(self, run_id, **entities):
            ops = self.client.log_batch(run_id, synchronous=False, **entities)
            if ops is not None:
                self.pending.setdefault(run_id, []).append(ops)

        def wait(self, run_id=None):
            for rid in [run_id] if run_id else list(self.pending):
                for ops in self.pending.pop(rid, []):
                    ops.wait()

        def log_params(self, run_id, params):
            from mlflow.entities import Param

            self._batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

        def set_tags(self, run_id, tags):
            from mlflow.entities import RunTag

            self._batch(run_id, tags=[RunTag(TAG + k, str(v)) for k, v in tags.items()])

        def log_metrics(self, run_id, metrics):
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._batch(run_id, metrics=[Metric(k, float(v), now, int(s)) for k, v, s in metrics])

        def finish(self, run_id, status="FINISHED"):
            self.wait(run_id)
            super().finish(run_id, status)

        def search(self, *args, **kwargs):
            self.wait()
            return super().search(*args, **kwargs)

        def done_jobs(self, jobs=None):
            self.wait()
            return super().done_jobs(jobs)

    return AsyncTracker(root)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed(tracker, blocked: list[float]):
    """`tracker` with every public method call's duration added to blocked[0]."""

    class Timed:
        def __getattr__(self, name):
            fn = getattr(tracker, name)

            def call(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    blocked[0] += time.perf_counter() - t
            return call

    return Timed()


def workload(tracker, runs: int, work: float) -> None:
    exp = tracker.experiment("bench")
    tracker.done_jobs()  # what `lmcsweep run` asks first
    sweep = tracker.start(exp, "sweep", "sweep", {"sweep": "s"})
    tracker.set_tags(sweep, {"definition": "d" * 64})
    for i in range(runs):
        kind = "train" if i < 2 else ("branch" if i < 10 else "interpolate")
        run = tracker.start(exp, f"job{i}", kind, {"sweep": "s", "job": f"job{i}", "origin": "computed"},
                            parent=sweep)
        busy(work)
        tracker.log_params(run, {f"param_{k}": k * 0.1 for k in range(60)})
        for b in range(4):
            tracker.log_metrics(run, [(f"metric_{k}", k + b * 0.5, b * 500 + k) for k in range(75)])
        tracker.set_tags(run, {"state": "done", "iterations": 2000})
        tracker.log_dict(run, {"job": f"job{i}", "curve": list(range(30))}, "record.json")
        tracker.finish(run)
    tracker.runs_of_sweep("s")
    tracker.done_jobs()
    tracker.finish(sweep)


def child(mode: str, root: str, with_torch: bool, runs: int, work: float) -> None:
    """One measurement: phases since the top of this process, printed as JSON."""
    sys.path.insert(0, str(ROOT))
    marks = {}
    from lmcsweep.tracking import Tracker, TrackingProcess

    tracker = {"process": lambda: TrackingProcess(root=root), "sync": lambda: Tracker(root=root),
               "async": lambda: async_tracker(root)}[mode]()
    marks["tracker made"] = time.perf_counter() - T0
    if with_torch:
        import torch  # noqa: F401

        marks["torch imported"] = time.perf_counter() - T0
    blocked = [0.0]
    calls = timed(tracker, blocked)
    calls.experiment("bench")  # the first call: mlflow imported and the store opened (or waited for)
    marks["first call"] = blocked[0]
    workload(calls, runs, work)
    marks["calls sent"] = time.perf_counter() - T0
    errors = calls.close() if mode == "process" else (calls.wait() if mode == "async" else None) or {}
    marks["committed"] = time.perf_counter() - T0
    marks["blocked"] = blocked[0]
    assert not errors, errors
    with sqlite3.connect(Path(root) / "mlflow.db") as db:  # everything is there
        metrics = db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        finished = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]
    assert metrics == runs * 300 and finished == runs + 1, (metrics, finished)
    print(json.dumps(marks), flush=True)
    os._exit(0)  # as `lmcsweep run`: no interpreter teardown


def measure(mode: str, with_torch: bool, runs: int, work: float, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", mode, "--root", str(Path(tmp) / "store"), "--runs", str(runs),
               "--work", str(work)]
        out = subprocess.run(cmd + (["--torch"] if with_torch else []), capture_output=True, text=True, env=env,
                             timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{mode}: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=14)
    ap.add_argument("--work", type=float, default=0.2, help="seconds of CPU work per run (training)")
    ap.add_argument("--without-torch", action="store_true", help="also the cases without torch's import")
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--root")
    ap.add_argument("--torch", action="store_true")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.root, args.torch, args.runs, args.work)

    cache = tempfile.mkdtemp(prefix="lmcsweep-bench-cache-")
    env = {**os.environ, "XDG_CACHE_HOME": cache, "PYTHONPATH": str(ROOT)}
    cases = ([(m, False) for m in MODES] if args.without_torch else []) + [(m, True) for m in MODES]
    measure("sync", False, 1, 0.0, env)  # makes the empty-store template (and warms the page cache)
    results: dict[tuple[str, bool], list[dict]] = {c: [] for c in cases}
    for _ in range(args.repeats):
        for case in cases:  # interleaved, so the machine's load falls on all of them alike
            results[case].append(measure(*case, args.runs, args.work, env))

    def med(case, key):
        return statistics.median(r[key] for r in results[case])

    print(f"{args.runs} runs (+ the sweep run), {args.runs * 300} metrics, {args.work} s of work a run; seconds "
          f"since process start (blocked: inside tracker calls), median of {args.repeats}")
    head = (f"{'':34}{'made':>7}{'torch':>7}{'1st call':>9}{'blocked':>8}{'sent':>7}{'committed':>10}"
            f"{'vs process':>11}")
    print(head)
    for with_torch in (False, True):
        if (MODES[0], with_torch) not in results:
            continue
        base = med(("process", with_torch), "committed")
        for mode in MODES:
            case = (mode, with_torch)
            torch_t = f"{med(case, 'torch imported'):7.2f}" if with_torch else f"{'-':>7}"
            print(f"{LABELS[mode] + (' +torch' if with_torch else ''):34}{med(case, 'tracker made'):7.2f}{torch_t}"
                  f"{med(case, 'first call'):9.2f}{med(case, 'blocked'):8.2f}{med(case, 'calls sent'):7.2f}{med(case, 'committed'):10.2f}"
                  f"{med(case, 'committed') / base:10.2f}x")
    sync = ("sync", True)
    print(f"import torch: {statistics.median(r['torch imported'] - r['tracker made'] for r in results[sync]):.2f} s; "
          f"import mlflow + open the store (the synchronous tracker's first call after torch): "
          f"{med(sync, 'first call'):.2f} s")

if __name__ == "__main__":
    main()
