"""Where the wall time of a whole sweep goes: `lmcsweep run sweeps/quickstart.yaml` on a fresh
temporary store, broken down into process start, imports, planning, data loading, training +
evaluation, MLflow and checkpoint I/O. Target: >= 85% of the wall time in training and evaluation.

The sweep runs in a child process that does what `lmcsweep run` does (start the tracking process,
import torch, then the CLI's `_run`), with lmcsweep functions wrapped with timers; time is charged
to the outermost wrapped call on the main thread, and work on the background writer thread is
reported beside it (it overlaps training). MLflow's own work happens in the tracking process (it
overlaps too); what this process spends on it is sending calls and waiting for answers. A second
child runs the plain console script for the end-to-end wall time with `--plain`.

    .venv/bin/python bench/sweep_overhead.py [--sweep sweeps/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `lmcsweep run` talks to MLflow through its tracking process: the time this process spends sending
# calls and waiting for answers (a query waits for the writes sent before it)
TRACKER_CALLS = ("experiment", "start", "log_params", "set_tags", "log_metrics", "log_dict", "log_text", "log_plot",
                 "log_artifact", "finish", "reopen", "search", "finished_jobs", "runs_of_sweep", "mark_stale_running",
                 "run", "done_jobs", "metric_history", "write_errors", "close")
CATEGORIES = {  # category: (module, qualified names)
    "training+evaluation": ("lmcsweep.train", ["train", "evaluate", "evaluate_group"]),
    # copies train in worker processes (their loops, evaluations and own checkpoint writes, and the
    # fork, ~60 ms a group): the call that waits for them
    "training+evaluation (copies together)": ("lmcsweep.run.together", ["together"]),
    "interpolation (evaluation)": ("lmcsweep.interpolate", ["path_curves", "error_curves", "error_curve",
                                                             "endpoint_stats"]),
    "planning + config": ("lmcsweep.plan.build", ["build_plan"]),
    "config": ("lmcsweep.config", ["load_sweep"]),
    "data loading (waiting for it)": ("lmcsweep.run.context", ["Datasets.get"]),
    # `lmcsweep run` talks to MLflow through its tracking process: the time this process spends
    # sending calls and waiting for answers (queries wait for the writes before them)
    "checkpoint I/O": ("lmcsweep.store", ["Store.save_checkpoint", "Store.load_checkpoint", "Store.save_resume",
                                          "Store.load_resume", "Store.clear_resume", "atomic_save"]),
    "waiting for the writer": ("lmcsweep.store", ["Writer.flush"]),
    "provenance (git)": ("lmcsweep.run.context", ["provenance"]),
    "optimizer construction": ("lmcsweep.train", ["make_optimizer"]),
    "model construction": ("lmcsweep.run.context", ["Context.model"]),
    "branch set-up (checkpoint, masks, loader)": ("lmcsweep.run.bodies", ["prepare_branch"]),
    "run params": ("lmcsweep.run.runs", ["job_params"]),
}


def categories(by_call: bool) -> dict[str, tuple[str, list[str]]]:
    if by_call:
        mlflow = {f"mlflow: {n}": ("lmcsweep.tracking", [f"TrackingProcess.{n}"]) for n in TRACKER_CALLS}
    else:
        mlflow = {"mlflow (tracking process calls)": ("lmcsweep.tracking", [f"TrackingProcess.{n}" for n in TRACKER_CALLS])}
    return {**CATEGORIES, **mlflow}


def child(sweep: str, store: str, started: float, by_call: bool) -> None:
    t_main = time.time()
    import importlib

    totals: dict[str, float] = {}
    background: dict[str, float] = {}
    local = threading.local()
    main_thread = threading.main_thread()

    def timed(category, fn, generator=False):
        def charge(dt):
            book = totals if threading.current_thread() is main_thread else background
            book[category] = book.get(category, 0.0) + dt

        if generator:
            @functools.wraps(fn)
            def wrapper(*a, **k):
                gen = fn(*a, **k)
                while True:
                    outer = not getattr(local, "depth", 0)
                    local.depth = getattr(local, "depth", 0) + 1
                    t = time.perf_counter()
                    try:
                        item = next(gen)
                    except StopIteration:
                        return
                    finally:
                        local.depth -= 1
                        if outer:
                            charge(time.perf_counter() - t)
                    yield item
        else:
            @functools.wraps(fn)
            def wrapper(*a, **k):
                outer = not getattr(local, "depth", 0)
                local.depth = getattr(local, "depth", 0) + 1
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    local.depth -= 1
                    if outer:
                        charge(time.perf_counter() - t)
        return wrapper

    import lmcsweep.cli.common as cli
    from lmcsweep.cli.sweeps import run_all
    from lmcsweep.store import Store
    from lmcsweep.tracking import TrackingProcess

    t = time.perf_counter()  # what `lmcsweep run` does: the tracking process starts first
    tracker = TrackingProcess(None, store)
    started_tracking = time.perf_counter() - t
    sweeps = cli.load_sweeps((sweep,))
    t = time.perf_counter()
    import torch  # noqa: F401  -- the heavy imports, timed on their own
    import lmcsweep.run.scheduler  # noqa: F401
    import lmcsweep.run.bodies  # noqa: F401
    imports = time.perf_counter() - t
    import inspect

    for category, (module_name, names) in categories(by_call).items():
        module = importlib.import_module(module_name)
        for name in names:
            owner, _, attr = name.rpartition(".")
            holder = getattr(module, owner) if owner else module
            original = getattr(holder, attr)
            wrapped = timed(category, original, inspect.isgeneratorfunction(original))
            setattr(holder, attr, wrapped)
            if not owner:  # also where it was imported by name
                for mod in list(sys.modules.values()):
                    if getattr(mod, "__name__", "").startswith("lmcsweep") and getattr(mod, attr, None) is original:
                        setattr(mod, attr, wrapped)
    t = time.perf_counter()
    try:
        try:
            run_all(sweeps, tracker, Store(store), progress=False, retry_failed=False)
        finally:
            tracker.close()
    finally:
        run = time.perf_counter() - t
        print(json.dumps({"process start": t_main - started, "imports": imports, "run": run, "main": totals,
                          "background": background, "tracking start": started_tracking}), flush=True)
        os._exit(0)  # as the console script ends (`cli.entry`): no interpreter teardown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "quickstart.yaml"))
    ap.add_argument("--plain", action="store_true", help="also time the uninstrumented console script")
    ap.add_argument("--by-call", action="store_true", help="MLflow time per tracker call")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], float(args.child[2]), args.child[3] == "1")
    exe = Path(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        out = subprocess.run([str(exe), __file__, "--child", args.sweep, str(Path(tmp) / "a"), str(t),
                              "1" if args.by_call else "0"],
                             capture_output=True, text=True, cwd=tmp)
        wall = time.time() - t
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        report = json.loads(out.stdout.strip().splitlines()[-1])
        if args.plain:
            t = time.time()
            plain = subprocess.run([str(exe.parent / "lmcsweep"), "--store", str(Path(tmp) / "b"), "run",
                                    "--no-progress", args.sweep], capture_output=True, text=True, cwd=tmp,
                                   env={**os.environ})
            plain_wall = time.time() - t
    main_t = report["main"]
    rows = [("process start (interpreter)", report["process start"]), ("tracking process start", report["tracking start"]),
            ("imports (torch, lmcsweep)", report["imports"])]
    rows += sorted(main_t.items(), key=lambda kv: -kv[1])
    accounted = report["process start"] + report["tracking start"] + report["imports"] + sum(main_t.values())
    rows.append(("other (job bodies: models, state copies, python)", wall - accounted))
    print(f"{Path(args.sweep).name}: wall {wall:.1f} s (instrumented `lmcsweep run` in a child process)"
          + (f"; {plain_wall:.1f} s plain `lmcsweep run` (exit {plain.returncode})" if args.plain else ""))
    for name, seconds in rows:
        print(f"  {name:48s} {seconds:7.2f} s  {100 * seconds / wall:5.1f}%")
    core = sum(v for k, v in main_t.items() if k.startswith("training") or k.startswith("interpolation"))
    print(f"  training + evaluation share of wall time: {100 * core / wall:.1f}% (target >= 85%)")
    for name, seconds in sorted(report["background"].items()):
        print(f"  background writer thread, {name:27s} {seconds:7.2f} s (overlaps training)")


if __name__ == "__main__":
    main()
