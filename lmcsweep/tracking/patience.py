"""A tracking server that goes away for a while: every call to it is tried again, with backoff,
until the retry window has passed (`LMCSWEEP_TRACKING_RETRY` seconds, default 600); then
`TrackingUnavailable`, one line, and every later call fails at once with it.

MLflow's own client retries each HTTP request too (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default 7,
with `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR` 2: about 4 minutes a request, whatever the window says).
Unless you set those variables yourself, lmcsweep sets MLflow's retries to 0 for an http(s)
server, so that the window here is the one wait, counted from the first failed call.
Only failures that say the server is not answering are tried again (connection refused or reset,
a timeout, 408/429/5xx answers): an answer that refuses the call (a bad parameter, a missing run)
raises at once. A server that has not answered once since the command started (a wrong address, a
server not started yet) gets one line on stderr once it has waited `NOTICE_AFTER` seconds, so
that nobody waits the window in silence. The server's address is shown without its password (`uris.shown`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ..uris import shown

WINDOW_ENV = "LMCSWEEP_TRACKING_RETRY"
DEFAULT_WINDOW = 600.0
NOTICE_AFTER = 5.0  # seconds of waiting for a server that never answered before the line saying so


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer within the retry window (one line: what, where, what to do)."""


def retry_window() -> float:
    value = os.environ.get(WINDOW_ENV, "")
    try:
        return float(value) if value else DEFAULT_WINDOW
    except ValueError:
        raise TrackingUnavailable(f"{WINDOW_ENV}={value!r} is not a number of seconds") from None


def remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def quiet_mlflow_retries() -> None:
    """MLflow's per-request retries off (unless set by the user): the window here does the waiting."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def _unanswered(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the server did not answer, rather than refused the call."""
    import requests

    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.RetryError, ConnectionError, TimeoutError)):
            return True
        if isinstance(e, requests.exceptions.HTTPError) and e.response is not None \
                and (e.response.status_code in (408, 429) or e.response.status_code >= 500):
            return True
        code = getattr(e, "error_code", "")
        if code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        e = e.__cause__ or e.__context__
    return False


def _why(exc: BaseException) -> str:
    """The socket's own words if there are some ("Connection refused"), else the error's first line."""
    import re

    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return found.group(1).strip() if found else f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


class Patient:
    """`client` (an MlflowClient for the server at `uri`) whose calls are tried again while the
    server does not answer, for at most `window` seconds from the first failure; then
    `TrackingUnavailable`, and from then on at once (`down` holds the line)."""

    def __init__(self, client: Any, uri: str, window: float | None = None):
        self._client, self._uri = client, shown(uri)
        self._window = retry_window() if window is None else window
        self.down: str | None = None
        self._answered = False  # (once it has, an outage is waited out without a word until the window ends)

    def __getattr__(self, name: str) -> Any:
        member = getattr(self._client, name)
        if not callable(member):
            return member

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down is not None:
                raise TrackingUnavailable(self.down)
            first, pause = None, 0.5
            while True:
                try:
                    answer = member(*args, **kwargs)
                    self._answered = True
                    return answer
                except Exception as exc:
                    if not _unanswered(exc):
                        raise
                    now = time.monotonic()
                    first = now if first is None else first
                    if not self._answered and NOTICE_AFTER <= now - first < self._window:
                        self._answered = True  # (said once)
                        print(f"tracking server {self._uri} does not answer ({_why(exc)}); trying again for up "
                              f"to {self._window:g} s (--tracking-retry, {WINDOW_ENV})", file=sys.stderr, flush=True)
                    if now - first >= self._window:
                        self.down = (f"tracking server {self._uri} did not answer for {now - first:.0f} s "
                                     f"({WINDOW_ENV}={self._window:g}; {name}: {_why(exc)}): start it again, "
                                     "then run the same command again (interrupted jobs resume, nothing is lost)")
                        raise TrackingUnavailable(self.down) from None
                    time.sleep(min(pause, max(0.0, first + self._window - now)))
                    pause = min(pause * 2, 30.0)

        return call
