"""The `lmcsweep` command line (click). Thin: each command parses, calls one function, prints.

Exit codes: 0 success; 1 some jobs failed (or the tracking process died); 2 bad input (sweep file
errors, unknown names, a missing data set, the sweep already running); 3 the store cannot be used
(`failures`: one line, the traceback in <store>/lmcsweep-errors.log); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .config import ConfigError, load_sweep

STATE: dict = {"store": "mlruns"}  # the command's store, for `entry`'s report of a store failure
STORE_HELP = "folder of the embedded store: mlflow.db, artifacts/, checkpoints/ (env LMCSWEEP_STORE)"


def _load(paths: tuple[str, ...]):
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


def _backends(ctx: click.Context, process: bool = False):
    """The tracker and the store; with `process`, MLflow is served by a helper process
    (`tracking.TrackingProcess`), started now so that its start-up overlaps torch's import."""
    from .store import Store
    from .tracking import Tracker, TrackingProcess

    root = ctx.obj["store"]
    return (TrackingProcess if process else Tracker)(ctx.obj["tracking_uri"], root), Store(root)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--store", default=lambda: os.environ.get("LMCSWEEP_STORE", "mlruns"), show_default="mlruns",
              type=click.Path(file_okay=False), help=STORE_HELP)
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (env MLFLOW_TRACKING_URI; default: sqlite:///<store>/mlflow.db)")
@click.version_option(package_name="lmcsweep")
@click.pass_context
def main(ctx: click.Context, store: str, tracking_uri: str | None) -> None:
    """Linear mode connectivity and lottery-ticket sweeps, tracked in MLflow.

    \b
    lmcsweep validate sweeps/quickstart.yaml   check a sweep file
    lmcsweep plan sweeps/quickstart.yaml       its jobs, what is done, what is left
    lmcsweep run sweeps/quickstart.yaml        run or resume it
    lmcsweep query --sweep quickstart          instability records
    lmcsweep ui                                the MLflow UI on the store
    """
    ctx.obj = STATE.update(store=str(Path(store).resolve()), tracking_uri=tracking_uri) or STATE


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
def validate(files: tuple[str, ...]) -> None:
    """Check sweep FILES and that their data sets are here: FILE:LINE: field: message (exit 2)."""
    from .sweep import data_problem

    checked = [(path, sweep, data_problem(path, sweep)) for path, sweep in zip(files, _load(files))]
    for path, sweep, problem in checked:
        click.echo(problem or f"{path}: ok ({sweep.name}, preset {sweep.preset})", err=bool(problem))
    if any(problem for *_, problem in checked):
        sys.exit(2)


def _print_plan(sweep, tracker) -> None:
    from .records.status import plan_lines

    click.echo("\n".join(plan_lines(sweep, tracker)))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.pass_context
def plan(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Show the jobs of sweep FILES, how many are already in the store, and the work left."""
    sweeps = _load(files)
    tracker, _ = _backends(ctx)
    for sweep in sweeps:
        _print_plan(sweep, tracker)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--dry-run", is_flag=True, help="print the plan and stop (same as `lmcsweep plan`)")
@click.option("--plan-only", is_flag=True,
              help="make the sweep's MLflow run and record its job specs in the store, run nothing "
                   "(then `lmcsweep job run HASH` runs any of them)")
@click.option("--retry-failed", is_flag=True, help="run again the jobs that failed before")
@click.option("--progress/--no-progress", default=True, show_default=True, help="progress bar")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="run the jobs on N local worker processes sharing the job queue")
@click.option("--queue-uri", default=None, envvar="LMCSWEEP_QUEUE",
              help="the job queue's database (env LMCSWEEP_QUEUE; default sqlite:///<store>/queue.db)")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="where --workers run: local processes, or a SLURM job array (submitit)")
@click.option("--gpus", default=None, help="local workers: GPUs to use, e.g. 0,1,2,3 (--workers per GPU)")
@click.option("--slurm", "slurm_options", multiple=True, metavar="KEY=VALUE",
              help="sbatch option for --executor slurm: partition, time (minutes), cpus-per-task, "
                   "gpus-per-task, gpus-per-node, mem, account, qos, constraint, exclude, extra=KEY:VALUE")
@click.pass_context
def run(ctx: click.Context, files: tuple[str, ...], dry_run: bool, plan_only: bool, retry_failed: bool,
        progress: bool, workers: int | None, queue_uri: str | None, executor: str, gpus: str | None,
        slurm_options: tuple[str, ...]) -> None:
    """Run (or resume) sweep FILES. Finished jobs are never recomputed; killed ones resume."""
    if plan_only or workers:
        bad = [o for o in slurm_options if "=" not in o]
        if bad:
            raise click.BadParameter(f"{bad[0]!r} is not KEY=VALUE", param_hint="--slurm")
        slurm = dict(o.split("=", 1) for o in slurm_options) if executor == "slurm" else None
        _queued(ctx, _load(files), workers, queue_uri, slurm, gpus.split(",") if gpus else None)
        return
    if dry_run:
        return ctx.invoke(plan, files=files)
    sweeps = _load(files)
    code, tracker = 0, None
    try:  # Ctrl-C from the first moment on (torch's import included) ends with how to resume
        tracker, store = _backends(ctx, process=True)  # first: its start-up overlaps ours
        code = 1 if _run(sweeps, tracker, store, progress, retry_failed) else 0
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; {RESUME}", err=True)
        code = 130
    except Exception as exc:
        from .data import DataError  # (imported by now: they are what raised)
        from .store import SweepBusy
        from .tracking import TrackingProcessError

        if isinstance(exc, TrackingProcessError):
            click.echo(f"error: {exc}. The sweep stopped; {RESUME}", err=True)
            code = 1
        elif isinstance(exc, (DataError, SweepBusy)):
            click.echo(f"error: {exc}", err=True)
            code = 2
        else:
            raise
    finally:
        if tracker is not None:
            tracker.close()
    sys.exit(code)


RESUME = ("run the same command again to resume (runs left RUNNING are marked KILLED, interrupted jobs "
          "continue from their resume checkpoints)")


def _run(sweeps, tracker, store, progress: bool, retry_failed: bool) -> bool:
    from .sweep import run_sweeps

    return run_sweeps(sweeps, tracker, store, progress, retry_failed, click.echo)


@main.command()
@click.argument("name", required=False)
@click.option("--repair", "fix", is_flag=True, help="compute again what is damaged or missing (the normal runner)")
@click.pass_context
def verify(ctx: click.Context, name: str | None, fix: bool) -> None:
    """Check the outputs (checkpoints, masks) of the done jobs of every sweep in the store (or NAME)
    against their checksums: ok / damaged / missing per job; exit 1 if any is left so, 2 unknown NAME."""
    from .verify import verify_report

    lines, code = verify_report(*_backends(ctx), name, fix)
    click.echo("\n".join(lines))
    sys.exit(code)


def _queue(ctx: click.Context, queue_uri: str | None, lease: float | None = None):
    from .queue import LEASE_SECONDS, Queue, default_uri

    return Queue(queue_uri or default_uri(ctx.obj["store"]), lease=lease or LEASE_SECONDS)


def _queued(ctx: click.Context, sweeps, workers: int | None, queue_uri: str | None, slurm: dict | None,
            gpus: list[str] | None) -> None:
    """--plan-only (sweeps planned into the store and the queue) or --workers N (and run by N workers)."""
    from .data import DataError
    from .queue import QueueError
    from .store import SweepBusy
    from .cluster import run_with_workers
    from .sweep import JobError, plan_sweep

    tracker, store = _backends(ctx)
    failed = False

    last: list[str] = []

    def show(counts: dict[str, int]) -> None:  # a line when the queue's counts change
        line = "  jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        if [line] != last:
            click.echo(line, err=True)
            last[:] = [line]
    try:
        queue = _queue(ctx, queue_uri)
        queue.exists()  # an unreachable queue stops here, before anything is written
        for sweep in sweeps:
            if not workers:
                plan_sweep(sweep, tracker, store, queue)
                click.echo(f"{sweep.name}: planned in {store.root}, its jobs queued in {queue.uri} "
                           f"(`lmcsweep job list {sweep.name}`; `lmcsweep worker` runs them)")
                continue
            out = run_with_workers(sweep, tracker, store, queue, workers, ctx.obj["store"], ctx.obj["tracking_uri"],
                                   show, slurm, gpus)
            click.echo(f"{sweep.name}: {out['done']} jobs done, {out['failed']} failed, {out['open']} left "
                       f"({workers} workers{' per GPU' if gpus else ''}, {out['seconds']:.0f}s)")
            for job, errors in out["failures"].items():
                click.echo(f"  FAILED {job}: {' | '.join(errors)}", err=True)
            for trial in out["trials_failed"]:
                click.echo(f"  FAILED {trial}", err=True)
            failed = failed or bool(out["failed"] or out["open"] or out["trials_failed"])
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; {RESUME}", err=True)
        sys.exit(130)
    except Exception as exc:
        from .slurm import SlurmError  # (imported by now if it is what raised)

        if not isinstance(exc, (JobError, SweepBusy, QueueError, DataError, SlurmError)):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(1 if failed else 0)


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
    one failed). Start as many as you like, on any machine that sees the store and the queue."""
    from .queue import QueueError
    from .workers import work

    queue = None
    try:
        queue = _queue(ctx, queue_uri, lease)
        if not queue.exists() or not queue.counts(sweep_name):
            raise QueueError(f"no planned jobs{f' of sweep {sweep_name!r}' if sweep_name else ''} in queue "
                             f"{queue.uri} (`lmcsweep run --plan-only FILE` or `--workers N` plans a sweep)")
        tracker, store = _backends(ctx, process=True)
        report = work(tracker, store, queue, sweep_name, time_limit)
        tracker.close()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        import sqlalchemy  # the queue's database (imported by now: it is what raised)

        if isinstance(exc, QueueError):
            click.echo(f"error: {exc}", err=True)
        elif isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
            click.echo(f"error: job queue {queue.uri if queue else queue_uri}: {str(exc).splitlines()[0]}", err=True)
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

    from .plan.graph import plan_from_dict

    tracker, store = _backends(ctx)
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
def job_run(ctx: click.Context, job_hash: str, sweep_name: str | None, trial: int | None, retry_failed: bool) -> None:
    """Run job HASH of a planned sweep in this process, from its spec in the store, recorded in its
    own MLflow run where the sweep's runner would put it. Exit 1 if it failed, 2 if it cannot run."""
    from .store import SweepBusy
    from .sweep import JobError, run_job

    tracker, store = _backends(ctx)
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


def _stored(ctx: click.Context, sweep_name: str | None):
    """The tracker and store, after checking that the store holds runs (of sweep `sweep_name`):
    else a message and exit 2 (and no store is created)."""
    tracker, store = _backends(ctx)
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
    from .sweep import JobError
    from .tickets import write_ticket

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
@click.option("--kind", type=click.Choice(["instability", "imp"]), default="instability", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--superseded", is_flag=True, help=SUPERSEDED_HELP)
@click.pass_context
def query(ctx: click.Context, sweep_name: str | None, kind: str, fmt: str, superseded: bool) -> None:
    """Print stored records read back from MLflow: one per interpolation and split (instability)
    or one per trained subnetwork (imp), of each sweep's current definition (the sweep file it was
    last run with)."""
    from .records import query as q
    from .records.status import current_jobs

    tracker, store = _stored(ctx, sweep_name)
    jobs = current_jobs(tracker, store.root, sweep_name)
    records = (q.instability_records(tracker, sweep_name, jobs=jobs, superseded=superseded) if kind == "instability"
               else q.imp_records(tracker, sweep_name, jobs=jobs, superseded=superseded))
    click.echo(q.render(records, fmt, q.INSTABILITY_FIELDS if kind == "instability" else q.IMP_FIELDS))


@main.command()
@click.argument("name", required=False)
@click.option("--queue-uri", default=None, envvar="LMCSWEEP_QUEUE",
              help="the job queue's database (env LMCSWEEP_QUEUE; default sqlite:///<store>/queue.db)")
@click.pass_context
def status(ctx: click.Context, name: str | None, queue_uri: str | None) -> None:
    """Each sweep in the store (or sweep NAME) with its jobs done / running / failed / pending, and
    the job queue's workers: what each is running, its last heartbeat."""
    from .records.status import status_lines, sweep_status

    tracker, store = _backends(ctx)
    rows = sweep_status(tracker, store.root, name)
    if not rows:
        where = f"store {store.root}" + (f" (tracking {tracker.uri})" if ctx.obj["tracking_uri"] else "")
        click.echo(f"no sweep {name!r} in {where}" if name else f"no sweeps in {where}")
        sys.exit(2 if name else 0)
    click.echo(f"store {store.root}")
    click.echo("\n".join(status_lines(rows)))
    _print_workers(ctx, queue_uri)


def _print_workers(ctx: click.Context, queue_uri: str | None) -> None:
    import time

    queue = _queue(ctx, queue_uri)
    if not queue.exists() or not queue.workers():
        return
    click.echo(f"\n{'worker':<28}{'heartbeat':>10}{'done':>6}  running")
    for w in queue.workers():
        age = time.time() - w["heartbeat"]
        click.echo(f"{w['name']:<28}{age:>9.0f}s{w['done']:>6}  {', '.join(json.loads(w['running'])) or '-'}")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def presets(fmt: str) -> None:
    """The Table-1 presets: network, data set, parameter count (of the built model), optimizer,
    schedule, length, batch size, and the paper's reported accuracy."""
    from .records.presets import preset_rows, render_rows

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
    from .data import DataError
    from .data.ffcv import prepare

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
    """Figures (instability vs rewind point, accuracy vs density) and an HTML page of SWEEP_NAME
    (its current definition's records, as `query`)."""
    from .records import query as q
    from .records.report import write_report
    from .records.status import current_jobs

    tracker, store = _stored(ctx, sweep_name)
    jobs = current_jobs(tracker, store.root, sweep_name)
    instability = q.instability_records(tracker, sweep_name, jobs=jobs, superseded=superseded)
    imp = q.imp_records(tracker, sweep_name, jobs=jobs, superseded=superseded)
    if not instability and not imp:
        click.echo(f"no records of sweep {sweep_name!r} in the store"
                   + ("" if superseded else " (of its current definition; --superseded: of every version)"), err=True)
        sys.exit(2)
    click.echo(str(write_report(sweep_name, instability, imp, Path(out))))


@main.command()
@click.option("--port", default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--sweep", "sweep_name", default=None, help="print only this sweep's address")
@click.pass_context
def ui(ctx: click.Context, port: int, host: str, sweep_name: str | None) -> None:
    """Serve the MLflow UI on the store; once it answers, print each sweep's runs-table address."""
    from .tracking.ui import ready_text, serve

    tracker, _ = _backends(ctx)
    sweeps = {n: e for n, e in tracker.sweep_experiments().items() if sweep_name in (None, n)}
    if sweep_name is not None and not sweeps:
        click.echo(f"no sweep {sweep_name!r} in store {tracker.uri}", err=True)
        sys.exit(2)
    sys.exit(serve(tracker.uri, tracker.artifact_root, host, port,
                   lambda base: click.echo(ready_text(base, tracker.uri, sweeps))))


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
        from .failures import EXIT_STORE, explain, log

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


if __name__ == "__main__":
    entry()
