"""Commands on what the store holds: query, status, report, export, presets, data prepare, ui."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..uris import scrub, shown
from .common import backends, job_queue, main


def _stored(ctx: click.Context, sweep_name: str | None):
    """The tracker and store, after checking that the store holds runs (of sweep `sweep_name`):
    else a message and exit 2 (and no store is created)."""
    tracker, store = backends(ctx)
    if not tracker.exists() or (sweep_name is not None and not tracker.run_rows(sweep_name)):
        click.echo(f"no sweep {sweep_name!r} in the store ({ctx.obj['store']})" if sweep_name
                   else f"nothing has run in the store ({ctx.obj['store']})", err=True)
        sys.exit(2)
    return tracker, store


@main.command()
@click.argument("name")
@click.option("--replicate", type=int, default=0, show_default=True, help="the replicate (initialisation)")
@click.option("--rewind", required=True, help="the rewind point k: 20it, 2ep, or iterations")
@click.option("--level", type=int, required=True, help="the IMP level (0: the dense network)")
@click.option("--control", type=click.Choice(["none", "random_prune", "random_reinit"]), default="none")
@click.option("--trial", type=int, default=None, help="a trial of a search")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="the ticket file to write")
@click.pass_context
def export(ctx: click.Context, name: str, out: str, control: str, **where) -> None:
    """Write an IMP subnetwork (mask, weights at k, model, level, density, k, job hash, seeds) as one
    file; lmcsweep.export.load_ticket(FILE) loads it as a torch module."""
    from ..sweep import JobError
    from ..tickets import write_ticket

    tracker, store = _stored(ctx, name)
    try:
        click.echo(write_ticket(tracker, store, name, Path(out), None if control == "none" else control, **where))
    except JobError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


SUPERSEDED_HELP = ("also the records of jobs a sweep no longer has (left by runs of an earlier version of its "
                   "file), marked superseded")


@main.command()
@click.option("--sweep", "sweep_name", default=None, help="only this sweep")
@click.option("--kind", type=click.Choice(["instability", "imp", "trials", "onset"]), default="instability",
              show_default=True,
              help="instability: a record per interpolation and split; imp: per trained subnetwork; trials: per "
                   "trial of a search (hyperparameters, objective, state); onset: per replicate (and IMP level) "
                   "of an onset search, its bracket and cost")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--superseded", is_flag=True, help=SUPERSEDED_HELP)
@click.pass_context
def query(ctx: click.Context, sweep_name: str | None, kind: str, fmt: str, superseded: bool) -> None:
    """Print stored records read back from MLflow: one per interpolation and split (instability),
    one per trained subnetwork (imp), or one per onset search's replicate and IMP level (onset), of
    each sweep's current definition (the sweep file it was last run with); or one per trial of each
    search, from its Optuna study (trials)."""
    from ..records import query as q
    from ..records.status import current_jobs

    tracker, store = _stored(ctx, sweep_name)
    if kind == "trials":
        from ..records.trials import FIELDS, trial_records

        click.echo(q.render(trial_records(tracker, store.root, sweep_name), fmt, FIELDS))
        return
    jobs = current_jobs(tracker, store.root, sweep_name)
    if kind == "onset":
        from ..search.onset import ONSET_FIELDS, onset_records

        rows = onset_records(tracker, sweep_name, None if superseded else jobs)
        if not rows and sweep_name is not None:
            _onset_search_or_exit(tracker, sweep_name)
        if fmt != "json":  # lists as text in a table or CSV
            rows = [{k: (json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else v)
                     for k, v in r.items()} for r in rows]
        click.echo(q.render(rows, fmt, ONSET_FIELDS))
        return
    records = (q.instability_records(tracker, sweep_name, jobs=jobs, superseded=superseded) if kind == "instability"
               else q.imp_records(tracker, sweep_name, jobs=jobs, superseded=superseded))
    click.echo(q.render(records, fmt, q.INSTABILITY_FIELDS if kind == "instability" else q.IMP_FIELDS))


def _onset_search_or_exit(tracker, sweep_name: str) -> None:
    """A sweep whose recorded definition is not an onset search has no onset records to wait for:
    one line saying so and how to ask for one, exit 2 (a definition that cannot be read: no line)."""
    from ..records.status import recorded_configs

    config = recorded_configs(tracker, sweep_name).get(sweep_name)
    if config is None or (config.instability is not None and config.instability.onset is not None):
        return
    what = "no instability section" if config.instability is None else "a list of rewind points"
    click.echo(f"sweep {sweep_name!r} has no onset search ({what}): ask for one in its file with "
               "`instability.rewind: {search: onset, grid: [...]}` (docs/onset.md)", err=True)
    sys.exit(2)


@main.command()
@click.argument("name", required=False)
@click.option("--queue-uri", default=None, envvar="LMCSWEEP_QUEUE",
              help="the job queue's database (env LMCSWEEP_QUEUE; default sqlite:///<store>/queue.db)")
@click.pass_context
def status(ctx: click.Context, name: str | None, queue_uri: str | None) -> None:
    """Each sweep in the store (or sweep NAME) with its jobs done / running / failed / pending, and
    the job queue's workers: their last heartbeat, the jobs each holds and the time left on their leases."""
    from ..records.status import status_lines, sweep_status

    tracker, store = backends(ctx)
    rows = sweep_status(tracker, store.root, name)
    if not rows:
        where = f"store {store.root}" + (f" (tracking {shown(tracker.uri)})" if ctx.obj["tracking_uri"] else "")
        click.echo(f"no sweep {name!r} in {where}" if name else f"no sweeps in {where}")
        sys.exit(2 if name else 0)
    click.echo(f"store {store.root}")
    click.echo("\n".join(status_lines(rows)))
    _print_workers(ctx, queue_uri, store, [row["sweep"] for row in rows])


def _print_workers(ctx: click.Context, queue_uri: str | None, store, sweeps: list[str]) -> None:
    import sqlalchemy

    from ..queue import QueueError
    from ..leases import worker_lines

    queue = job_queue(ctx, queue_uri)
    try:
        lines = worker_lines(queue, store, sweeps) if queue.exists() else []
    except (QueueError, sqlalchemy.exc.SQLAlchemyError) as exc:  # the sweeps are shown: the workers cannot be
        why = scrub(str(exc), queue.uri) if isinstance(exc, QueueError) else \
            f"job queue {shown(queue.uri)}: {str(exc).splitlines()[0]}"
        click.echo(f"\nerror: the workers cannot be shown: {why}", err=True)
        sys.exit(2)
    if lines:
        click.echo("\n" + "\n".join(lines))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def presets(fmt: str) -> None:
    """The Table-1 presets: network, data set, parameter count (of the built model), optimizer,
    schedule, length, batch size, and the paper's reported accuracy."""
    from ..records.presets import preset_rows, render_rows

    click.echo(render_rows(preset_rows(), fmt))


@main.group()
def data() -> None:
    """Data sets: FFCV files."""


@data.command("prepare")
@click.argument("dataset", type=click.Choice(["mnist", "fashion_mnist", "cifar10", "imagenet", "synthetic"]))
@click.option("--root", default=None, help="folder holding the data set (else $LMCSWEEP_DATA, then defaults)")
@click.option("--out", default=None, help="where the .beton files go (default: <store>/ffcv)")
@click.option("--download", is_flag=True, help="let torchvision download the data set into --root")
@click.pass_context
def data_prepare(ctx: click.Context, dataset: str, root: str | None, out: str | None, download: bool) -> None:
    """Write FFCV .beton files (train and test) of DATASET once; existing complete files are kept."""
    from ..data import DataError
    from ..data.ffcv import prepare

    try:
        paths = prepare(dataset, root, out or str(Path(ctx.obj["store"]) / "ffcv"), download=download)
    except DataError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    for split, path in paths.items():
        click.echo(f"{split}: {path}")


@main.command()
@click.argument("sweep_name")
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--superseded", is_flag=True, help=SUPERSEDED_HELP)
@click.pass_context
def report(ctx: click.Context, sweep_name: str, out: str, superseded: bool) -> None:
    """One self-contained HTML page of SWEEP_NAME's figures (instability vs k; error along the path
    for each k; instability vs k of IMP subnetworks beside their controls; earliest stable and
    matching k vs density; accuracy vs density), from its current definition's records (as
    `query`): written to OUT/SWEEP_NAME/index.html with the figures as PNG files, and logged under
    report/ on the sweep's MLflow run."""
    from ..records import query as q
    from ..records.report import publish, read_curves, write_report
    from ..records.status import current_jobs

    tracker, store = _stored(ctx, sweep_name)
    jobs = current_jobs(tracker, store.root, sweep_name)
    instability = q.instability_records(tracker, sweep_name, jobs=jobs, superseded=superseded)
    imp = q.imp_records(tracker, sweep_name, jobs=jobs, superseded=superseded)
    if not instability and not imp:
        click.echo(f"no records of sweep {sweep_name!r} in the store"
                   + ("" if superseded else " (of its current definition; --superseded: of every version)"), err=True)
        sys.exit(2)
    from ..search.onset import onset_records
    thresholds = {r["threshold"] for r in onset_records(tracker, sweep_name, None if superseded else jobs)}
    index = write_report(sweep_name, instability, imp, Path(out), read_curves(tracker, instability),
                         **({"threshold": thresholds.pop()} if len(thresholds) == 1 else {}))
    if publish(tracker, sweep_name, index) is None:
        click.echo(f"sweep {sweep_name!r} has no sweep run in the store: the report is not logged to MLflow", err=True)
    click.echo(str(index))


@main.command()
@click.option("--port", default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--sweep", "sweep_name", default=None, help="print only this sweep's address")
@click.pass_context
def ui(ctx: click.Context, port: int, host: str, sweep_name: str | None) -> None:
    """Serve the MLflow UI on the store; once it answers, print each sweep's runs-table address."""
    from ..tracking.ui import ready_text, serve

    tracker, _ = backends(ctx)
    sweeps = {n: e for n, e in tracker.sweep_experiments().items() if sweep_name in (None, n)}
    if sweep_name is not None and not sweeps:
        click.echo(f"no sweep {sweep_name!r} in store {shown(tracker.uri)}", err=True)
        sys.exit(2)
    sys.exit(serve(tracker.uri, tracker.artifact_root, host, port,
                   lambda base: click.echo(ready_text(base, tracker.uri, sweeps))))



