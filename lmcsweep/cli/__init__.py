"""The `lmcsweep` command line (click). Thin: each command parses, calls one function, prints.

Exit codes: 0 success; 1 some jobs failed (or the tracking process died); 2 bad input (sweep file
errors, unknown names, a missing data set, the sweep already running); 3 the store cannot be used
(`failures`: one line, the traceback in <store>/lmcsweep-errors.log); 130 interrupted (Ctrl-C).
"""

from . import jobs, records, sweeps  # noqa: F401 -- each registers its commands on `main`
from .common import entry, main

__all__ = ["entry", "main"]
