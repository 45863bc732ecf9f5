"""MLflow: the run tree, its tags, lookups by job hash, and the query records read back from it.

The only package that imports mlflow (and only where it is first used: `lmcsweep plan` and
`status` answer from the SQLite file without it). `client`: `Tracker`, the layer over
`MlflowClient`; `database`: read-only SQL fast paths over the store's database and the cached
empty store; `process`: `TrackingProcess`, which serves a `Tracker` from a helper process for
`lmcsweep run`; `patience`: calls to a tracking server that went away, tried again for a while; `names`: the tag prefix, run kinds and statuses.
"""

from .client import Tracker
from .database import check_database, default_uri
from .names import FAILED, FINISHED, KILLED, KINDS, RUNNING, TAG, tag
from .patience import TrackingUnavailable
from .process import TrackingProcess, TrackingProcessError, serve

__all__ = ["Tracker", "TrackingProcess", "TrackingProcessError", "TrackingUnavailable", "TAG", "KINDS", "RUNNING",
           "FINISHED", "FAILED", "KILLED", "tag", "default_uri", "check_database", "serve"]
