"""Database and server addresses as lmcsweep shows them: never with their password.

A URI may carry one (`postgresql+psycopg://lab:PASSWORD@db:5432/queue`, `https://lab:PASSWORD@host`);
every line that names a tracking server or a job queue shows it as `lab:***@...`. (Better still,
keep passwords out of URIs: PostgreSQL reads `~/.pgpass` or `PGPASSWORD`, MLflow
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`.)"""

from __future__ import annotations


def shown(uri: str | None) -> str:
    """`uri` with its password (if any) as ***."""
    scheme, sep, rest = str(uri).partition("://")
    if not sep:
        return str(uri)
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")  # (the host follows the last @)
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return str(uri)
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def scrub(text: str, *uris: str | None) -> str:
    """`text` (a message naming `uris`) with each of them as `shown` gives it."""
    for uri in uris:
        if uri:
            text = text.replace(uri, shown(uri))
    return text
