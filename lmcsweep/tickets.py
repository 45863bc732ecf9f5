"""Exporting a ticket from a store (`lmcsweep export`): the IMP level (or control) of a sweep's
recorded plan, found and checked, made into one file (`run.tickets`, `export`)."""

from __future__ import annotations

from pathlib import Path

from .data import DataError
from .plan.graph import plan_from_dict
from .run.scheduler import Runner
from .run.tickets import ticket as make_ticket
from .steps import parse_step
from .store import Store, atomic_save
from .sweep import JobError
from .tracking import Tracker


def write_ticket(tracker: Tracker, store: Store, name: str, out: Path, control: str | None = None, *,
                 replicate: int, rewind: str, level: int, trial: int | None = None) -> str:
    """`export_ticket` written to `out` (atomically); what was written, in a line. JobError for
    anything that stops it (no such level, a missing data set or file, an unwritable `out`)."""
    try:
        ticket = export_ticket(tracker, store, name, replicate, rewind, level, control, trial)
        atomic_save(ticket, out)
    except (DataError, FileNotFoundError) as exc:
        raise JobError(str(exc)) from None
    except OSError as exc:
        raise JobError(f"cannot write {out}: {exc.strerror or exc}") from None
    kind = f"control {ticket['control']}" if ticket["control"] else "IMP"
    return (f"{out}: {ticket['model']['name']} {kind}, level {ticket['level']}, density {ticket['density']:.4f}, "
            f"rewind {ticket['rewind']}; load: lmcsweep.export.load_ticket(path)")


def export_ticket(tracker: Tracker, store: Store, name: str, replicate: int, rewind: str, level: int,
                  control: str | None = None, trial: int | None = None) -> dict:
    """The ticket (`export.make_ticket`) of IMP level `level` at rewind point `rewind` (a duration:
    "20it", "2ep", or iterations) of `replicate` in the recorded plan of sweep `name` (its `trial`),
    or of one of its controls, made from the store. JobError when there is no such level or it is not done."""
    if store.load_plan(name, trial) is None:
        where = f"sweep {name!r}" + (f" trial {trial}" if trial is not None else "")
        raise JobError(f"{where} is not planned in store {store.root} (run it with `lmcsweep run FILE` first)")
    plan = plan_from_dict(store.load_plan(name, trial))
    try:
        k = plan.hyper.iterations_of(parse_step(int(rewind) if rewind.isdigit() else rewind))
    except ValueError as exc:
        raise JobError(f"--rewind: {exc}") from None
    if not any(j.kind == "prune" for j in plan.jobs):
        raise JobError(f"sweep {name!r} has no IMP levels (no imp section): no subnetwork to export")
    levels = [j for j in plan.jobs if j.kind == "prune" and j.tags.get("replicate") == replicate]
    found = [j for j in levels if j.tags.get("rewind") == k and j.tags.get("level") == level]
    if not found:
        have = sorted({(j.tags.get("rewind"), j.tags.get("level")) for j in levels})
        raise JobError(f"sweep {name!r} has no IMP level {level} at rewind {k} for replicate {replicate} "
                       f"(it has rewind/level: {', '.join(f'{r}/{lv}' for r, lv in have) or 'none'})")
    level_job = found[0]
    done = tracker.done_jobs([level_job.hash])
    if level_job.hash not in done and not store.job_dir(level_job.hash).joinpath("mask.pt").exists():
        raise JobError(f"IMP level {level} at rewind {k} of replicate {replicate} is not done yet "
                       f"(`lmcsweep run` the sweep first)")
    branch = None
    if control is not None:
        copies = [j for j in plan.jobs if j.kind == "branch" and j.spec.mask == level_job.hash
                  and j.spec.control == control]
        if not copies:
            raise JobError(f"sweep {name!r} has no {control} control at level {level}, rewind {k}")
        branch = min(copies, key=lambda j: j.tags.get("copy", 0))
    runner = Runner(tracker, store, progress=False)
    ctx = runner.context(plan)
    return make_ticket(ctx, level_job.hash, level_job.spec, branch.spec if branch else None,
                  branch.hash if branch else None)
