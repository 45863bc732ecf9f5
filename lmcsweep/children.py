"""Helper processes that live no longer than the process that started them.

Copy workers (`copies`) and the tracking process (`tracking.TrackingProcess`) call
`die_with_parent` first thing, so a killed `lmcsweep run` leaves nothing behind (Linux; elsewhere
they end when their pipes close).
"""

from __future__ import annotations

import os


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (PR_SET_PDEATHSIG); exit now if
    the parent is already gone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
