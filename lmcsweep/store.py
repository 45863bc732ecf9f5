"""Checkpoints and masks on disk, written atomically.

Layout under the store root (default ``mlruns/``, beside the MLflow database)::

    checkpoints/<job hash>/it<iteration>.pt     weights (+ optimizer state) at an iteration
    checkpoints/<job hash>/resume.pt            the latest resume point of an unfinished job
    locks/<sweep>.lock                          held by the one runner of a sweep (`sweep_lock`)
    checkpoints/<job hash>/mask.pt              the masks of an IMP level (a prune job)
    checkpoints/<job hash>/ticket.pt            its ticket: mask, weights at k, model (`export`)
    plans/<sweep>/plan.json                     the job specs of a sweep run (`lmcsweep job run`)
    plans/<sweep>/trial-<n>/plan.json           those of trial n of its search

A write goes to a temporary file in the same folder, is flushed to disk and then renamed over the
target, so a process killed mid-write never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, so that `lmcsweep plan` and `status` start quickly


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            import torch

            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` database URI (MLflow's store, Optuna's storage); None for any
    other URI."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


class SweepBusy(RuntimeError):
    """Another runner holds the sweep's lock."""


class Store:
    """Files of jobs, addressed by job hash; the sweeps' locks."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def _lock_path(self, sweep: str) -> Path:
        return self.root / "locks" / f"{sweep}.lock"

    @contextlib.contextmanager
    def sweep_lock(self, sweep: str) -> Iterator[None]:
        """One runner per sweep and store at a time (so RUNNING runs left behind are known to be dead)."""
        path = self._lock_path(sweep)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SweepBusy(f"sweep {sweep!r} is already running against this store (lock {path} is held)") from None
            yield

    def runner_alive(self, sweep: str) -> bool:
        """Whether a runner holds the sweep's lock now (else RUNNING runs are leftovers of a kill)."""
        path = self._lock_path(sweep)
        if not path.exists():
            return False
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def active_runners(self) -> set[str]:
        """The sweeps whose lock a runner holds now."""
        folder = self.root / "locks"
        names = sorted(p.stem for p in folder.glob("*.lock")) if folder.is_dir() else []
        return {name for name in names if self.runner_alive(name)}

    def job_dir(self, job: str) -> Path:
        return self.root / "checkpoints" / job

    def checkpoint_path(self, job: str, iteration: int) -> Path:
        return self.job_dir(job) / f"it{iteration}.pt"

    def save_checkpoint(self, job: str, iteration: int, state: dict[str, Any]) -> Path:
        path = self.checkpoint_path(job, iteration)
        atomic_save(state, path)
        return path

    def has_checkpoint(self, job: str, iteration: int) -> bool:
        return self.checkpoint_path(job, iteration).exists()

    def load_checkpoint(self, job: str, iteration: int, device: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.checkpoint_path(job, iteration)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint of job {job} at iteration {iteration} ({path})")
        import torch

        return torch.load(path, map_location=device, weights_only=False)

    def share_checkpoint(self, source: str, job: str, iteration: int) -> bool:
        """Make `job`'s checkpoint at `iteration` the one of `source` (a job with the same result):
        a hard link (a copy where the file system has none). False if `source` has none."""
        src, dst = self.checkpoint_path(source, iteration), self.checkpoint_path(job, iteration)
        if dst.exists():
            return True
        if not src.exists():
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return True

    def checkpoint_iterations(self, job: str) -> list[int]:
        """The iterations `job` has checkpoints at, in order."""
        return sorted(int(p.stem[2:]) for p in self.job_dir(job).glob("it*.pt"))

    def save_masks(self, job: str, masks: dict[str, Any]) -> Path:
        path = self.job_dir(job) / "mask.pt"
        atomic_save(masks, path)
        return path

    def load_masks(self, job: str) -> dict[str, Any]:
        import torch

        return torch.load(self.job_dir(job) / "mask.pt", map_location="cpu", weights_only=False)

    def save_ticket(self, job: str, ticket: dict[str, Any]) -> Path:
        """An IMP level's ticket (`export.make_ticket`), beside its mask."""
        path = self.job_dir(job) / "ticket.pt"
        atomic_save(ticket, path)
        return path

    def plan_path(self, sweep: str, trial: int | None = None) -> Path:
        folder = self.root / "plans" / sweep
        return (folder if trial is None else folder / f"trial-{trial}") / "plan.json"

    def save_plan(self, sweep: str, trial: int | None, data: dict[str, Any]) -> None:
        """Write a plan's specs (JSON) atomically."""
        path = self.plan_path(sweep, trial)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".plan.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def planned(self, sweep: str | None = None, trial: int | None = None) -> list[tuple[str, int | None]]:
        """(sweep, trial) of every plan recorded in the store (of `sweep`, `trial` when given)."""
        out = []
        for path in sorted((self.root / "plans").glob("**/plan.json")):
            parts = path.relative_to(self.root / "plans").parts
            name, number = parts[0], (int(parts[1][len("trial-"):]) if len(parts) == 3 else None)
            if (sweep is None or name == sweep) and (trial is None or number == trial):
                out.append((name, number))
        return out

    def load_plan(self, sweep: str, trial: int | None = None) -> dict[str, Any] | None:
        path = self.plan_path(sweep, trial)
        return json.loads(path.read_text()) if path.exists() else None

    def save_resume(self, job: str, state: dict[str, Any]) -> None:
        atomic_save(state, self.job_dir(job) / "resume.pt")

    def load_resume(self, job: str, device: str | torch.device = "cpu") -> dict[str, Any] | None:
        path = self.job_dir(job) / "resume.pt"
        if not path.exists():
            return None
        import torch

        return torch.load(path, map_location=device, weights_only=False)

    def clear_resume(self, job: str) -> None:
        path = self.job_dir(job) / "resume.pt"
        if path.exists():
            path.unlink()


class Writer:
    """Runs writes (checkpoints, metric batches) in order on one background thread, off the training
    loop's path. `flush()` waits for everything submitted and re-raises the first failure; a job
    flushes before it counts as finished, so its files and metrics are all there when it does."""

    def __init__(self) -> None:
        import queue
        import threading

        self._queue: "queue.Queue" = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="lmcsweep-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            fn, args = self._queue.get()
            try:
                if self._error is None:
                    fn(*args)
            except BaseException as exc:  # noqa: BLE001 -- kept and re-raised by flush()
                self._error = exc
            finally:
                self._queue.task_done()

    def submit(self, fn, *args) -> None:
        self._queue.put((fn, args))

    def flush(self) -> None:
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
