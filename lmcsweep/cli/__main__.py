"""`python -m lmcsweep.cli`."""

from . import entry

entry()
