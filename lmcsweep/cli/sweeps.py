"""Commands on sweep files: validate, plan, run (in this process, on workers, or planned only),
verify."""

from __future__ import annotations

import sys

import click

from ..uris import scrub, shown
from .common import backends, job_queue, load_sweeps, main


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
def validate(files: tuple[str, ...]) -> None:
    """Check sweep FILES and that their data sets are here: FILE:LINE: field: message (exit 2)."""
    from ..sweep import data_problem

    checked = [(path, sweep, data_problem(path, sweep)) for path, sweep in zip(files, load_sweeps(files))]
    for path, sweep, problem in checked:
        click.echo(problem or f"{path}: ok ({sweep.name}, preset {sweep.preset})", err=bool(problem))
    if any(problem for *_, problem in checked):
        sys.exit(2)


def _print_plan(sweep, tracker) -> None:
    from ..records.status import plan_lines

    click.echo("\n".join(plan_lines(sweep, tracker)))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.pass_context
def plan(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Show the jobs of sweep FILES, how many are already in the store, the work left (interrupted
    jobs with how far they got) and the time it would take at the store's measured throughput."""
    sweeps = load_sweeps(files)
    tracker, _ = backends(ctx)
    for sweep in sweeps:
        _print_plan(sweep, tracker)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--dry-run", is_flag=True, help="print the plan and stop (same as `lmcsweep plan`)")
@click.option("--plan-only", is_flag=True,
              help="make the sweep's MLflow run and record its job specs in the store, run nothing "
                   "(then `lmcsweep job run HASH` runs any of them)")
@click.option("--retry-failed", is_flag=True, help="run again the jobs that failed before")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="a progress bar on a terminal; with --no-progress (or stderr not a terminal) a line per job as it ends")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="run the jobs on N local worker processes sharing the job queue")
@click.option("--queue-uri", default=None, envvar="LMCSWEEP_QUEUE",
              help="the job queue's database (env LMCSWEEP_QUEUE; default sqlite:///<store>/queue.db)")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="where --workers run: local processes, or a SLURM job array (submitit)")
@click.option("--gpus", default=None,
              help="local workers: GPUs to use, e.g. 0,1,2,3, --workers per GPU (default 1), each seeing its own")
@click.option("--slurm", "slurm_options", multiple=True, metavar="KEY=VALUE",
              help="sbatch option for --executor slurm, over the sweep file's `slurm` section: partition, "
                   "time (minutes), cpus-per-task, gpus-per-task, gpus-per-node, mem, account, qos, constraint, "
                   "exclude, extra=KEY:VALUE (any other sbatch option)")
@click.pass_context
def run(ctx: click.Context, files: tuple[str, ...], dry_run: bool, plan_only: bool, retry_failed: bool,
        progress: bool, workers: int | None, queue_uri: str | None, executor: str, gpus: str | None,
        slurm_options: tuple[str, ...]) -> None:
    """Run (or resume) sweep FILES. Finished jobs are never recomputed; killed ones resume."""
    if dry_run:
        return ctx.invoke(plan, files=files)
    if gpus is not None:
        placed_on = _gpus(gpus, executor, plan_only)
        workers = workers or 1  # (a worker per GPU unless told)
    if plan_only or workers:
        bad = [o for o in slurm_options if "=" not in o]
        if bad:
            raise click.BadParameter(f"{bad[0]!r} is not KEY=VALUE", param_hint="--slurm")
        slurm = list(slurm_options) if executor == "slurm" else None
        _queued(ctx, files, workers, queue_uri, slurm, placed_on if gpus is not None else None, progress)
        return
    code, tracker = 0, None
    try:  # Ctrl-C from the first moment on (torch's import included) ends with how to resume
        sweeps = load_sweeps(files)
        tracker, store = backends(ctx, process=True)  # first: its start-up overlaps ours
        code = 1 if run_all(sweeps, tracker, store, progress, retry_failed) else 0
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; {RESUME}", err=True)
        code = 130
    except Exception as exc:
        from ..data import DataError  # (imported by now: they are what raised)
        from ..store import SweepBusy
        from ..tracking import TrackingProcessError, TrackingUnavailable

        if isinstance(exc, (TrackingProcessError, TrackingUnavailable)):
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


def _gpus(text: str, executor: str, plan_only: bool) -> list[str]:
    """--gpus checked: one line and exit 2 for GPUs this machine lacks, or where they mean nothing."""
    from ..gpus import GpuError, parse_gpus

    if executor == "slurm" or plan_only:
        where = "--executor slurm (ask SLURM for them: --slurm gpus-per-task=N)" if executor == "slurm" \
            else "--plan-only (it runs nothing)"
        click.echo(f"error: --gpus places local workers; it does not go with {where}", err=True)
        sys.exit(2)
    try:
        return parse_gpus(text)
    except GpuError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


RESUME = ("run the same command again to resume (runs left RUNNING are marked KILLED, interrupted jobs "
          "continue from their resume checkpoints)")


def run_all(sweeps, tracker, store, progress: bool, retry_failed: bool) -> bool:
    from ..sweep import run_sweeps

    return run_sweeps(sweeps, tracker, store, progress, retry_failed, click.echo)


@main.command()
@click.argument("name", required=False)
@click.option("--repair", "fix", is_flag=True, help="compute again what is damaged or missing (the normal runner)")
@click.pass_context
def verify(ctx: click.Context, name: str | None, fix: bool) -> None:
    """Check the outputs (checkpoints, masks) of the done jobs of every sweep in the store (or NAME)
    against their checksums: ok / damaged / missing per job (and plans the store no longer has);
    exit 1 if any is left so, 2 unknown NAME."""
    from ..verify import verify_report

    lines, code = verify_report(*backends(ctx), name, fix)
    click.echo("\n".join(lines))
    sys.exit(code)


def _queued(ctx: click.Context, files: tuple[str, ...], workers: int | None, queue_uri: str | None,
            slurm: list[str] | None, gpus: list[str] | None, progress: bool) -> None:
    """--plan-only (sweeps planned into the store and the queue) or --workers N (and run by N
    workers, watched as a one-process run is: `watch`). Ctrl-C: one line, exit 130."""
    failed = False
    try:  # (Ctrl-C from the first moment on, imports included, ends in one line)
        sweeps = load_sweeps(files)
        from ..cluster import run_with_workers
        from ..sweep import plan_sweep, report

        tracker, store = backends(ctx)
        if slurm is not None and workers:  # each sweep's sbatch options, checked before anything is written
            from .. import slurm as cluster

            placed = {sweep.name: cluster.options(sweep.slurm, slurm) for sweep in sweeps}
            for options in placed.values():  # sbatch's refusal (a bad partition) too
                cluster.check(workers, options)
        queue = job_queue(ctx, queue_uri)
        queue.exists()  # an unreachable queue stops here, before anything is written
        for sweep in sweeps:
            if not workers:
                plan_sweep(sweep, tracker, store, queue)
                click.echo(f"{sweep.name}: planned in {store.root}, its jobs queued in {shown(queue.uri)} "
                           f"(`lmcsweep job list {sweep.name}`; `lmcsweep worker` runs them)")
                continue
            outcome, problems = run_with_workers(sweep, tracker, store, queue, workers, ctx.obj["store"],
                                                 ctx.obj["tracking_uri"], progress,
                                                 placed[sweep.name] if slurm is not None else None, gpus)
            report(outcome, sweep, click.echo, "(a job fails after 3 attempts; `lmcsweep job list` shows every "
                   "attempt's error)", f"{workers} worker{'s' if workers > 1 else ''}{' per GPU' if gpus else ''}")
            for line in problems:
                click.echo(f"  {line}", err=True)
            failed = failed or bool(outcome.failed or outcome.left)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; {RESUME}", err=True)
        sys.exit(130)
    except Exception as exc:
        from ..data import DataError  # (imported by now if it is what raised)
        from ..queue import QueueError
        from ..slurm import SlurmError
        from ..store import SweepBusy
        from ..sweep import JobError
        from ..tracking import TrackingUnavailable

        if not isinstance(exc, (JobError, SweepBusy, QueueError, DataError, SlurmError, TrackingUnavailable)):
            raise
        click.echo(f"error: {scrub(str(exc), queue_uri, ctx.obj['tracking_uri'])}", err=True)
        sys.exit(2)
    sys.exit(1 if failed else 0)
