"""The job queue's workers as `lmcsweep status` shows them: each one's last heartbeat and jobs done,
and the jobs it holds by name (with trial and sweep when the store has their plan) with the time
left on each lease, and a search's trial it is asking or telling (a live worker renews them every third of a lease). A worker whose leases have
all expired has died or lost its node: it is marked so, and its jobs are claimed again. (A worker
waiting for jobs others hold renews nothing: its heartbeat ages and that is all.)"""

from __future__ import annotations

import json
import time
from typing import Any

from . import slots
from .queue import CLAIMED, Queue
from .store import Store


def worker_lines(queue: Queue, store: Store, sweeps: list[str], now: float | None = None) -> list[str]:
    """The workers table (empty when the queue has no workers); `sweeps`: those whose claimed jobs
    are looked up by name."""
    workers = queue.workers()
    if not workers:
        return []
    now = time.time() if now is None else now
    held, asking = _held(queue, store, sweeps), _asking(queue, sweeps)
    lines = [f"{'worker':<28}{'heartbeat':>10}{'done':>6}  running (lease left)"]
    for w in workers:
        age = now - w["heartbeat"]
        jobs, expired = [], 0
        for h in json.loads(w["running"]):
            name, lease_until, owner = held.get(h, (h, None, w["name"]))
            if owner != w["name"]:
                jobs.append(f"{name} (now held by {owner})")
            elif lease_until is None:
                jobs.append(name)
            else:
                left = lease_until - now
                jobs.append(f"{name} ({left:.0f}s)" if left >= 0 else f"{name} (expired {-left:.0f}s ago)")
                expired += left < 0
        jobs += asking.get(w["name"], [])
        silent = "  (its leases expired: gone? its jobs are claimed again)" if jobs and expired == len(jobs) else ""
        lines.append(f"{w['name']:<28}{age:>9.0f}s{w['done']:>6}  {', '.join(jobs) or '-'}{silent}")
    return lines


def _asking(queue: Queue, sweeps: list[str]) -> dict[str, list[str]]:
    """worker -> the trials of a random/tpe search it is asking or telling (`slots`)."""
    out: dict[str, list[str]] = {}
    for sweep in sweeps:
        for slot in slots.slots_of(queue, sweep):
            if slot["owner"] and slot["state"] in (slots.ASKING, slots.TELLING):
                what = "asking a trial" if slot["state"] == slots.ASKING else f"telling trial {slot['trial']}"
                out.setdefault(slot["owner"], []).append(f"{what} [{sweep}]")
    return out


def _held(queue: Queue, store: Store, sweeps: list[str]) -> dict[str, tuple[str, float | None, str]]:
    """hash -> (its name as the plan gives it, lease end, the worker holding it) for each claimed job."""
    out: dict[str, tuple[str, float | None, str]] = {}
    for sweep in sweeps:
        claimed = {key: row for key, row in queue.rows(sweep).items() if row["state"] == CLAIMED}
        names: dict[tuple[Any, str], str] = {}
        for trial in {trial for trial, _ in claimed}:
            data = store.load_plan(sweep, trial)
            where = f"{sweep}" + (f" trial {trial}" if trial is not None else "")
            for job in (data or {}).get("jobs", []):
                names[(trial, job["hash"])] = f"{job['name']} [{where}]"
        for (trial, h), row in claimed.items():
            out[h] = (names.get((trial, h), h), row["lease_until"], row["owner"])
    return out
