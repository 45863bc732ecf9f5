"""Commands on single jobs and workers: job list, job run, worker."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..uris import scrub, shown
from .common import backends, job_queue, main


@main.command()
@click.option("--queue-uri", default=None, envvar="LMCSWEEP_QUEUE",
              help="the job queue's database (env LMCSWEEP_QUEUE; default sqlite:///<store>/queue.db)")
@click.option("--sweep", "sweep_name", default=None, help="only jobs of this sweep")
@click.option("--time-limit", type=float, default=None, help="stop claiming jobs after this many seconds")
@click.option("--lease", type=float, default=None, help="lease of a claimed job, seconds (default 60)")
@click.pass_context
def worker(ctx: click.Context, queue_uri: str | None, sweep_name: str | None, time_limit: float | None,
           lease: float | None) -> None:
    """Claim and run jobs of planned sweeps from the job queue until none is left for it (exit 1 if
    one failed); with no job ready, ask (and queue) the next trial of a random/tpe search opened by
    `lmcsweep run --workers`, or tell one whose jobs have all ended. Start as many as you like, on
    any machine that sees the store and the queue. A tracking server that does not answer within
    --tracking-retry seconds stops it (exit 2): the jobs it held go back to the queue unfinished."""
    from ..queue import QueueError
    from ..slots import has_search
    from ..tracking import TrackingUnavailable
    from ..workers import work

    queue = None
    try:
        queue = job_queue(ctx, queue_uri, lease)
        if not queue.exists() or not (queue.counts(sweep_name) or has_search(queue, sweep_name)):
            raise QueueError(f"no planned jobs{f' of sweep {sweep_name!r}' if sweep_name else ''} in queue "
                             f"{shown(queue.uri)} (`lmcsweep run --plan-only FILE` or `--workers N` plans a sweep)")
        queue.upgrade()  # a queue planned by an earlier version
        plans = Path(ctx.obj["store"]) / "plans"  # the store the driver planned into? (before anything is made)
        for name in [sweep_name] if sweep_name else queue.open_sweeps():
            if queue.open_work(name) and not (plans / name).is_dir():
                raise QueueError(f"the queue holds jobs of sweep {name!r} but its plan is not in store "
                                 f"{ctx.obj['store']} (give the --store its driver used)")
        tracker, store = backends(ctx, process=True)
        tracker.all_experiment_ids()  # an unreachable tracking server stops it here, before any claim
        report = work(tracker, store, queue, sweep_name, time_limit)
        tracker.close()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        import sqlalchemy  # the queue's database (imported by now: it is what raised)

        uris = (queue.uri if queue else queue_uri, ctx.obj["tracking_uri"])
        if isinstance(exc, (QueueError, TrackingUnavailable)):
            click.echo(f"error: {scrub(str(exc), *uris)}", err=True)
        elif isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
            click.echo(f"error: job queue {shown(uris[0])}: {scrub(str(exc).splitlines()[0], *uris)}", err=True)
        else:
            raise
        sys.exit(2)
    click.echo(f"worker: {len(report.done)} jobs done, {len(report.failed)} failed, {len(report.lost)} lost "
               "(their leases had expired)")
    sys.exit(1 if report.failed else 0)


@main.group()
def job() -> None:
    """One job of a planned sweep: list them, run one in this process."""


@job.command("list")
@click.argument("sweep_name", metavar="NAME")
@click.option("--trial", type=int, default=None, help="a trial of a search")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def job_list(ctx: click.Context, sweep_name: str, trial: int | None, fmt: str) -> None:
    """The jobs of sweep NAME as planned in the store, parents first: hash, kind, name, state."""
    import json

    from ..plan.graph import plan_from_dict

    tracker, store = backends(ctx)
    data = store.load_plan(sweep_name, trial)
    if data is None:
        click.echo(f"error: no plan of sweep {sweep_name!r}" + (f" trial {trial}" if trial is not None else "")
                   + f" in store {store.root} (`lmcsweep run --plan-only FILE` records one)", err=True)
        sys.exit(2)
    plan = plan_from_dict(data)
    done = set(tracker.done_jobs([j.hash for j in plan.jobs])) if tracker.exists() else set()
    rows = [{"hash": j.hash, "kind": j.kind, "name": j.name, "parents": j.parents,
             "state": "done" if j.hash in done else "to run"} for j in plan.jobs]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['hash']:<30}{r['kind']:<13}{r['state']:<8}{r['name']}")


@job.command("run")
@click.argument("job_hash", metavar="HASH")
@click.option("--sweep", "sweep_name", default=None, help="the sweep whose plan holds it (if several do)")
@click.option("--trial", type=int, default=None, help="the trial of a search whose plan holds it")
@click.option("--retry-failed", is_flag=True, help="run it again if it failed before")
@click.pass_context
def jobrun_all(ctx: click.Context, job_hash: str, sweep_name: str | None, trial: int | None, retry_failed: bool) -> None:
    """Run job HASH of a planned sweep in this process, from its spec in the store, recorded in its
    own MLflow run where the sweep's runner would put it. Exit 1 if it failed, 2 if it cannot run."""
    from ..store import SweepBusy
    from ..sweep import JobError, run_job

    tracker, store = backends(ctx)
    try:
        outcome = run_job(tracker, store, job_hash, sweep_name, trial, retry_failed)
    except (JobError, SweepBusy) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for h, error in outcome.failed.items():
        click.echo(f"FAILED {h}: {error}", err=True)
    if outcome.failed or outcome.blocked:
        sys.exit(1)
    word = ("computed" if outcome.computed else "reused (its result was computed by another job)"
            if outcome.reused else "already done")
    click.echo(f"{job_hash}: {word} ({outcome.seconds:.1f}s)")



