"""The `lmcsweep` group, its global options, what every command shares (the sweep files read, the
tracker and store, the job queue) and the console script's entry (one line for a store failure)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..config import ConfigError, load_sweep

STATE: dict = {"store": "mlruns"}  # the command's store, for `entry`'s report of a store failure
STORE_HELP = "folder of the embedded store: mlflow.db, artifacts/, checkpoints/ (env LMCSWEEP_STORE)"


def load_sweeps(paths: tuple[str, ...]):
    sweeps, problems = [], []
    for path in paths:
        try:
            sweeps.append(load_sweep(path))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        click.echo("\n".join(problems), err=True)
        sys.exit(2)
    return sweeps


def backends(ctx: click.Context, process: bool = False):
    """The tracker and the store; with `process`, MLflow is served by a helper process
    (`tracking.TrackingProcess`), started now so that its start-up overlaps torch's import."""
    from ..store import Store
    from ..tracking import Tracker, TrackingProcess

    root = ctx.obj["store"]
    return (TrackingProcess if process else Tracker)(ctx.obj["tracking_uri"], root), Store(root)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", default=lambda: os.environ.get("LMCSWEEP_STORE", "mlruns"), show_default="mlruns",
              type=click.Path(file_okay=False), help=STORE_HELP)
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (env MLFLOW_TRACKING_URI; default: sqlite:///<store>/mlflow.db)")
@click.option("--tracking-retry", type=click.FloatRange(0), default=None, metavar="SECONDS",
              envvar="LMCSWEEP_TRACKING_RETRY",
              help="how long calls wait for an http(s) tracking server that stopped answering, retried "
                   "with backoff, before the command stops (env LMCSWEEP_TRACKING_RETRY; default 600)")
@click.version_option(package_name="lmcsweep")
@click.pass_context
def main(ctx: click.Context, store: str, tracking_uri: str | None, tracking_retry: float | None) -> None:
    """Linear mode connectivity and lottery-ticket sweeps, tracked in MLflow.

    \b
    lmcsweep validate sweeps/quickstart.yaml   check a sweep file
    lmcsweep plan sweeps/quickstart.yaml       its jobs, what is done, what is left
    lmcsweep run sweeps/quickstart.yaml        run or resume it
    lmcsweep query --sweep quickstart          instability records
    lmcsweep ui                                the MLflow UI on the store
    """
    if tracking_retry is not None:  # read where the MLflow client is made (also in the tracking process and workers)
        os.environ["LMCSWEEP_TRACKING_RETRY"] = f"{tracking_retry:g}"
    ctx.obj = STATE.update(store=str(Path(store).resolve()), tracking_uri=tracking_uri) or STATE




def job_queue(ctx: click.Context, queue_uri: str | None, lease: float | None = None):
    from ..queue import LEASE_SECONDS, Queue, default_uri

    return Queue(queue_uri or default_uri(ctx.obj["store"]), lease=lease or LEASE_SECONDS)



def entry() -> None:
    """The console script (and ``python -m lmcsweep.cli``): `main`, then a quick exit, skipping the
    interpreter's teardown (~0.4 s once torch is imported: everything is written and closed by
    then). A store failure ends in one line (`failures`); anything else with its traceback."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except Exception as exc:
        from ..failures import EXIT_STORE, explain, log

        line = explain(exc, STATE["store"])
        if line is None:
            raise
        where = log(exc, STATE["store"], sys.argv)
        print(f"error: {line}" + (f" (details: {where})" if where else ""), file=sys.stderr)
        code = EXIT_STORE
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):  # the reader went away (`lmcsweep query | head`)
            pass
    os._exit(code)


