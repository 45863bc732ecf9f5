"""A worker's name in the job queue, ``host:pid``, and whether the process it names has ended
(told only for a process of this host: another node's workers are known by their leases)."""

from __future__ import annotations

import os
import socket


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def gone(owner: str | None) -> bool:
    """Whether `owner` (a worker's name) is a process of this host that has ended."""
    if not owner or owner.rsplit(":", 1)[0] != socket.gethostname():
        return False
    try:
        os.kill(int(owner.rsplit(":", 1)[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
