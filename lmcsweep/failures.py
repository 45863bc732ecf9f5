"""Store failures told in one line: a damaged MLflow database, a full disk, a read-only or
unreadable store. `explain` turns an exception that stopped a command into what went wrong,
where, and what to do (None for anything else); `log` keeps the details (the traceback) in
``<store>/lmcsweep-errors.log`` (or the temp folder when the store cannot be written).
`transient` says which I/O errors are worth another try (`store` retries them a few times)."""

from __future__ import annotations

import errno
import os
import tempfile
import time
import traceback
from pathlib import Path

EXIT_STORE = 3  # the exit code of a command stopped by its store
LOG_NAME = "lmcsweep-errors.log"
TRANSIENT = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT}
DATABASE_DAMAGED = ("file is not a database", "database disk image is malformed", "malformed database schema",
                    "no such table", "file is encrypted or is not a database")


class Damaged(OSError):
    """A stored file whose bytes are not the ones written (its checksum differs, or it does not load)."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def transient(exc: BaseException) -> bool:
    """An I/O error that may pass if tried again (not a full disk, a read-only or missing file)."""
    return isinstance(exc, OSError) and exc.errno in TRANSIENT


def halts(exc: BaseException) -> bool:
    """Whether `exc` is the store failing (a full disk, a read-only or forbidden store, a damaged
    database), not the job: then the sweep stops, and the job is left to resume, not FAILED."""
    return explain(exc, "") is not None and not any(transient(e) for e in _chain(exc))


def explain(exc: BaseException, store: str | Path) -> str | None:
    """One line for a failure of the store at `store` (what, where, what to do); None if `exc` is
    not one."""
    for e in _chain(exc):
        text = str(e).lower()
        if isinstance(e, Damaged):
            return (f"{e}: run the sweep file again (`lmcsweep run FILE` records its plan again and computes "
                    f"damaged outputs again)")
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or "database or disk is full" in text:
            where = getattr(e, "filename", None) or store
            return (f"no space left on device (ENOSPC) writing {where}: free space on that disk or move the store "
                    f"(--store); then run the same command again: finished jobs are kept")
        if isinstance(e, OSError) and e.errno == errno.EROFS or "readonly database" in text \
                or "read-only file system" in text:
            return (f"the store {store} is on a read-only file system: remount it read-write or copy the store "
                    f"elsewhere (--store)")
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            return (f"permission denied on {e.filename or store}: give this user access to the store, or choose "
                    f"another one (--store)")
        if isinstance(e, OSError) and e.errno in (errno.ENOTDIR, errno.EISDIR):
            return (f"the store {store} cannot be used: a file is in the way of a folder ({e.filename}): choose "
                    f"another store (--store)")
        if "unable to open database file" in text:
            return (f"cannot open the MLflow database in {store} (unreadable folder or file, or no such folder "
                    f"can be made): check the path and its permissions (--store)")
        if any(sign in text for sign in DATABASE_DAMAGED):
            return (f"the MLflow database {Path(store) / 'mlflow.db'} is damaged or not a database: restore it "
                    f"from a backup, or move it away to start a new store")
        if isinstance(e, OSError) and e.errno in TRANSIENT:
            return f"input/output error on {e.filename or store} ({os.strerror(e.errno)}): check the disk, then run again"
    return None


def log(exc: BaseException, store: str | Path, argv: list[str]) -> Path | None:
    """Append the traceback of `exc` to the store's error log (the temp folder's when the store
    cannot be written); its path, or None when neither can be."""
    text = (f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(argv)}\n"
            + "".join(traceback.format_exception(exc)))
    for folder in (Path(store), Path(tempfile.gettempdir())):
        path = folder / LOG_NAME
        try:
            with open(path, "a") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None
