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
target, so a process killed mid-write never leaves a partial file under the final name. Then the
file's SHA-256 goes (atomically too) to ``<file>.sha256`` beside it, and every read checks it: a
file whose bytes are not the ones written raises `Damaged` (a resume point is discarded instead).
A file without its checksum (killed between the two writes, or written before checksums) is read
if it loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .failures import Damaged, transient

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, so that `lmcsweep plan` and `status` start quickly


def _write(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sidecar(path: Path) -> Path:
    """Where the checksum of `path` is kept."""
    return path.with_name(path.name + ".sha256")


def atomic_write(data: bytes, path: Path) -> str:
    """Write `data` to `path` atomically, then its checksum beside it; returns the checksum."""
    digest = checksum(data)
    with contextlib.suppress(FileNotFoundError):  # never an old checksum beside new bytes
        sidecar(path).unlink()
    _retried(_write, data, path)
    _retried(_write, f"{digest}  {path.name}\n".encode(), sidecar(path))
    return digest


RETRIES = 3  # tries of a write that fails with a transient I/O error (`failures.transient`) before it fails


def _retried(fn, *args) -> None:
    import time

    for attempt in range(RETRIES):
        try:
            return fn(*args)
        except OSError as exc:
            if not transient(exc) or attempt == RETRIES - 1:
                raise
            time.sleep(0.2 * 2 ** attempt)


def serialize(obj: Any) -> bytes:
    """The bytes torch.save writes for `obj`."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_save(obj: Any, path: Path) -> str:
    """torch.save `obj` to `path` atomically, with its checksum; returns the checksum."""
    return atomic_write(serialize(obj), path)


def check_file(path: Path) -> str:
    """'ok', 'damaged' (bytes differ from the recorded checksum), 'missing', or 'unchecked' (no
    checksum recorded)."""
    if not path.exists():
        return "missing"
    try:
        expected = sidecar(path).read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return "unchecked"
    return "ok" if _digest(path) == expected else "damaged"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_verified(path: Path, what: str) -> bytes:
    """The bytes of `path`, checked against its checksum (FileNotFoundError, `Damaged`)."""
    if not path.exists():
        raise FileNotFoundError(f"{what} is missing ({path})")
    data = path.read_bytes()
    try:
        expected = sidecar(path).read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return data
    if hashlib.sha256(data).hexdigest() != expected:
        raise Damaged(f"{what} is damaged: its SHA-256 is not the one recorded in {sidecar(path).name} ({path})")
    return data


def load_verified(path: Path, what: str, device: Any = "cpu") -> Any:
    """torch.load a checked file (`read_verified`); one that does not load is `Damaged` too."""
    import torch

    data = read_verified(path, what)
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 -- whatever the bytes make torch raise
        raise Damaged(f"{what} is damaged: it does not load ({type(exc).__name__}) ({path})") from None


def remove(path: Path) -> None:
    """Remove a stored file and its checksum."""
    for p in (path, sidecar(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


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

    def save_checkpoint(self, job: str, iteration: int, state: dict[str, Any]) -> str:
        """Write a checkpoint; returns its checksum."""
        return atomic_save(state, self.checkpoint_path(job, iteration))

    def write_checkpoint(self, job: str, iteration: int, data: bytes) -> str:
        """Write a checkpoint already serialized (`serialize`); returns its checksum."""
        return atomic_write(data, self.checkpoint_path(job, iteration))

    def has_checkpoint(self, job: str, iteration: int) -> bool:
        """Whether `job` has a good checkpoint at `iteration` (one whose checksum matches)."""
        return check_file(self.checkpoint_path(job, iteration)) in ("ok", "unchecked")

    def load_checkpoint(self, job: str, iteration: int, device: str | torch.device = "cpu") -> dict[str, Any]:
        return load_verified(self.checkpoint_path(job, iteration), f"checkpoint of job {job} at iteration {iteration}",
                             device)

    def share_checkpoint(self, source: str, job: str, iteration: int) -> bool:
        """Make `job`'s checkpoint at `iteration` the one of `source` (a job with the same result):
        a hard link (a copy where the file system has none). False if `source` has none."""
        src, dst = self.checkpoint_path(source, iteration), self.checkpoint_path(job, iteration)
        if check_file(dst) in ("ok", "unchecked"):
            return True
        if check_file(src) not in ("ok", "unchecked"):
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        for a, b in ((src, dst), (sidecar(src), sidecar(dst))) if sidecar(src).exists() else ((src, dst),):
            tmp = b.with_name(f".{b.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            try:
                os.link(a, tmp)
            except OSError:
                import shutil

                shutil.copyfile(a, tmp)
            os.replace(tmp, b)
        return True

    def checkpoint_iterations(self, job: str) -> list[int]:
        """The iterations `job` has good checkpoints at, in order."""
        return sorted(int(p.stem[2:]) for p in self.job_dir(job).glob("it*.pt")
                      if check_file(p) in ("ok", "unchecked"))

    def save_masks(self, job: str, masks: dict[str, Any]) -> Path:
        path = self.job_dir(job) / "mask.pt"
        atomic_save(masks, path)
        return path

    def load_masks(self, job: str) -> dict[str, Any]:
        return load_verified(self.job_dir(job) / "mask.pt", f"mask of job {job}")

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
        atomic_write(json.dumps(data, sort_keys=True).encode(), self.plan_path(sweep, trial))

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
        if not path.exists():
            return None
        what = f"the plan of sweep {sweep}" + (f" trial {trial}" if trial is not None else "")
        try:
            return json.loads(read_verified(path, what))
        except ValueError:
            raise Damaged(f"{what} is damaged: not JSON ({path})") from None

    def save_resume(self, job: str, state: dict[str, Any]) -> None:
        atomic_save(state, self.job_dir(job) / "resume.pt")

    def load_resume(self, job: str, device: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The resume point of `job`; None if it has none, or a damaged one (then removed: the job
        starts again from its last good state)."""
        path = self.job_dir(job) / "resume.pt"
        if not path.exists():
            return None
        try:
            return load_verified(path, f"resume point of job {job}", device)
        except Damaged:
            remove(path)
            return None

    def clear_resume(self, job: str) -> None:
        remove(self.job_dir(job) / "resume.pt")


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
