"""The `lmcsweep` command line (click). Thin: each command parses, calls one function, prints.

Exit codes: 0 success; 1 some jobs failed (or the tracking process died); 2 bad input (sweep file
errors, unknown names, a missing data set, the sweep already running); 3 the store cannot be used
(`failures`: one line, the traceback in <store>/lmcsweep-errors.log); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

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
    """Check sweep FILES; every problem is printed as FILE:LINE: field: message (exit 2)."""
    for path, sweep in zip(files, _load(files)):
        click.echo(f"{path}: ok ({sweep.name}, preset {sweep.preset})")


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
@click.pass_context
def run(ctx: click.Context, files: tuple[str, ...], dry_run: bool, plan_only: bool, retry_failed: bool,
        progress: bool) -> None:
    """Run (or resume) sweep FILES. Finished jobs are never recomputed; killed ones resume."""
    if plan_only:
        _plan_only(ctx, _load(files))
        return
    if dry_run:
        tracker, _ = _backends(ctx)
        for sweep in _load(files):
            _print_plan(sweep, tracker)
        return
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
    from .sweep import verify_report

    lines, code = verify_report(*_backends(ctx), name, fix)
    click.echo("\n".join(lines))
    sys.exit(code)


def _plan_only(ctx: click.Context, sweeps) -> None:
    from .store import SweepBusy
    from .sweep import JobError, plan_sweep

    tracker, store = _backends(ctx)
    for sweep in sweeps:
        try:
            plan_sweep(sweep, tracker, store)
        except (JobError, SweepBusy) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        click.echo(f"{sweep.name}: planned in {store.root} (`lmcsweep job list {sweep.name}` lists its jobs)")


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
@click.pass_context
def status(ctx: click.Context, name: str | None) -> None:
    """Each sweep in the store (or sweep NAME) with its jobs done / running / failed / pending."""
    from .records.status import sweep_status

    tracker, store = _backends(ctx)
    rows = sweep_status(tracker, store.root, name)
    if not rows:
        click.echo(f"no sweep {name!r} in the store" if name else "no sweeps in the store")
        sys.exit(2 if name else 0)
    click.echo(f"{'sweep':<24}{'jobs':>7}{'done':>7}{'running':>9}{'failed':>8}{'pending':>9}  status")
    for r in rows:
        pending = "?" if r["pending"] is None else r["pending"]
        note = r["status"] + (f", {r['interrupted']} interrupted" if r["interrupted"] else "")
        if r["trials"]:
            note += ", trials " + " ".join(f"{k.lower()} {v}" for k, v in r["trials"].items() if v)
        click.echo(f"{r['sweep']:<24}{r['jobs']:>7}{r['done']:>7}{r['running']:>9}{r['failed']:>8}{pending:>9}  {note}")


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
@click.pass_context
def ui(ctx: click.Context, port: int, host: str) -> None:
    """Open the MLflow UI on this project's store."""
    tracker, _ = _backends(ctx)
    tracker.all_experiment_ids()  # creates the database schema if it is new
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracker.uri,
           "--default-artifact-root", tracker.artifact_root, "--host", host, "--port", str(port)]
    click.echo(f"MLflow UI on http://{host}:{port}  (store {tracker.uri})")
    os.execv(sys.executable, cmd)


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
