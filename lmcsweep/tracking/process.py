"""`TrackingProcess`: the same `Tracker`, served from a helper process, so that `lmcsweep run`'s
own process never imports mlflow and never waits for its writes; `serve` is the helper's loop.
Kept over MLflow's own asynchronous logging by `bench/tracking.py` (docs/performance.md, "Tracking").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .client import Tracker
from .names import FAILED, FINISHED

WRITES = frozenset({"log_params", "set_tags", "log_metrics", "log_dict", "log_text", "log_plot",
                    "log_artifact", "finish", "reopen"})


class TrackingProcessError(RuntimeError):
    """The tracking process is gone (killed, out of memory): what it had not written is lost."""


class TrackingProcess(Tracker):
    """The same `Tracker`, served by a helper process that owns the MLflow connection, so that
    `lmcsweep run` never imports mlflow (~1 s) nor waits for its database writes.

    The helper starts at once: it imports mlflow and opens (or makes) the store while this process
    imports torch and plans. Calls go to it in order over a pipe; writes (`WRITES`) return at once,
    queries wait for their answer and so see every write sent before them. A write that fails
    makes its run's later ``finish(FINISHED)`` a FAILED with an error tag, and is reported by
    `write_errors()`, which also waits for every write sent so far. The helper dies with this
    process (`children.die_with_parent`), like the writer thread it replaces. Only the process
    that made it may call it (a forked copy worker sends its calls to its parent instead).
    """

    def __init__(self, uri: str | None = None, root: str | Path = "mlruns"):
        import threading

        super().__init__(uri, root)
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from lmcsweep.tracking import serve; serve()", self.uri, str(self.root),
             str(requests_r), str(answers_w), str(os.getpid())], pass_fds=(requests_r, answers_w),
            stdin=subprocess.DEVNULL)
        os.close(requests_r)
        os.close(answers_w)
        self._requests, self._answers = os.fdopen(requests_w, "wb"), os.fdopen(answers_r, "rb")
        self._lock = threading.Lock()
        self._owner = os.getpid()

    @property
    def client(self):
        raise RuntimeError("the MLflow client lives in the tracking process: call a Tracker method")

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        import pickle

        if os.getpid() != self._owner:
            raise RuntimeError(f"Tracker.{name} called from a forked process: send it to the parent")
        with self._lock:
            if self._proc.poll() is not None:
                raise TrackingProcessError(f"the tracking process exited (status {self._proc.returncode})")
            try:
                pickle.dump((name, args, kwargs), self._requests, protocol=pickle.HIGHEST_PROTOCOL)
                self._requests.flush()
                if name in WRITES:
                    return None
                size = self._answers.read(8)
                data = self._answers.read(int.from_bytes(size, "little")) if len(size) == 8 else b""
                if not data:
                    raise EOFError
            except (BrokenPipeError, EOFError) as exc:
                raise TrackingProcessError(f"the tracking process died (status {self._proc.wait()})") from exc
        ok, value = pickle.loads(data)  # whole: a failure here cannot leave the pipe half-read
        if not ok:
            raise value
        return value

    def close(self) -> dict[str, str]:
        """Wait for every write, stop the helper; returns `write_errors()` (nothing if the helper
        is gone already: the call that found it gone raised)."""
        try:
            return self.write_errors() if self._proc.poll() is None else {}
        finally:
            with self._lock:
                self._requests.close()
                self._proc.wait()
                self._answers.close()


def _forward(name: str):
    def call(self: TrackingProcess, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(Tracker, name).__doc__
    return call


for _name, _member in list(vars(Tracker).items()):  # every public method but the local file check
    if callable(_member) and not _name.startswith("_") and _name != "exists":
        setattr(TrackingProcess, _name, _forward(_name))
del _name, _member


def _portable(value: Any) -> Any:
    """`value` with mlflow's Run objects made plain namespaces (run.info.run_id, status,
    experiment_id, start_time, ...; run.data.tags, params, metrics), so that reading an answer of
    the tracking process does not import mlflow (a second)."""
    from types import SimpleNamespace

    from mlflow.entities import Run

    if isinstance(value, Run):
        i = value.info
        info = {k: getattr(i, k) for k in ("run_id", "run_name", "status", "experiment_id", "start_time",
                                           "end_time", "artifact_uri", "lifecycle_stage")}
        return SimpleNamespace(info=SimpleNamespace(**info), data=SimpleNamespace(
            tags=dict(value.data.tags), params=dict(value.data.params), metrics=dict(value.data.metrics)))
    if isinstance(value, (list, tuple)):
        return type(value)(_portable(v) for v in value)
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    return value


def serve() -> None:
    """The tracking process's loop (`TrackingProcess`): argv = uri, store root, request fd, answer
    fd, parent pid. Calls run in the order sent, except that `start` runs before writes still waiting."""
    import collections
    import contextlib
    import pickle
    import queue
    import signal
    import threading

    from ..children import die_with_parent

    uri, root, requests_fd, answers_fd, parent = sys.argv[1:6]
    die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run, which then waits for our writes
    tracker = Tracker(uri, root)
    failed: dict[str, str] = {}
    # the slow part, done while the caller imports torch: mlflow and its database store's modules;
    # the store itself is opened by the first call (none for a run that stops early)
    import mlflow.tracking  # noqa: F401

    if not uri.startswith(("http:", "https:", "databricks", "file:")):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read(requests) -> None:  # everything sent is read at once, so a run can be made out of turn
        try:
            while True:
                inbox.put(pickle.load(requests))
        except Exception:  # noqa: BLE001 -- EOF: the caller closed the pipe (or died)
            inbox.put(None)

    with os.fdopen(int(requests_fd), "rb") as requests, os.fdopen(int(answers_fd), "wb") as answers:
        threading.Thread(target=read, args=(requests,), daemon=True).start()
        pending: collections.deque = collections.deque()
        while True:
            if not pending:
                pending.append(inbox.get())
            with contextlib.suppress(queue.Empty):
                while True:
                    pending.append(inbox.get_nowait())
            # `start` (the caller waits for the run id) goes before writes queued for other runs
            first = next((i for i, m in enumerate(pending) if m is not None and m[0] == "start"), 0)
            message = pending[first]
            del pending[first]
            if message is None:  # every call is committed: skip the interpreter's slow teardown
                answers.flush()
                os._exit(0)
            name, args, kwargs = message
            try:
                if name == "write_errors":
                    value = dict(failed)
                elif name == "finish" and args[0] in failed and (args[1:] or [kwargs.get("status", FINISHED)])[0] == FINISHED:
                    tracker.set_tags(args[0], {"error": f"tracking: {failed[args[0]]}"[:5000]})
                    value = tracker.finish(args[0], FAILED)
                else:
                    value = _portable(getattr(tracker, name)(*args, **kwargs))
                ok = True
            except Exception as exc:  # noqa: BLE001 -- a query's error goes back; a write's is kept
                ok, value = False, exc
                if name in WRITES:
                    run_id = args[0] if args else kwargs.get("run_id", "")
                    failed.setdefault(run_id, f"{name}: {type(exc).__name__}: {exc}")
            if name in WRITES:
                continue
            try:
                data = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
                if not ok:  # some exceptions pickle but cannot be rebuilt
                    pickle.loads(data)
            except Exception as exc:  # noqa: BLE001 -- an answer that cannot travel
                data = pickle.dumps((False, RuntimeError(f"{name}: {type(value).__name__}: {value} ({exc})")))
            answers.write(len(data).to_bytes(8, "little") + data)
            answers.flush()
