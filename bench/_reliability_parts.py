"""The four parts of the reliability suite (`bench/reliability.py`): each returns a table row
{what, tried, outcome, failures: {name: count}} and its trials, one dict each, for the record."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from _reliability import (ROOT, SWEEPS, compare, damage, kill_group, lmc, results, start, sweep_name,
                          tracebacks)


def reference(kind: str, sweep: Path, store: Path) -> dict:
    """An uninterrupted run of sweep `kind`: its store, wall seconds and results."""
    began = time.time()
    done = lmc(store, "run", sweep, "--no-progress")
    seconds = time.time() - began
    if done.returncode != 0:
        raise RuntimeError(f"the reference run of {kind} failed:\n{done.stdout}{done.stderr}")
    return {"kind": kind, "sweep": sweep, "store": store, "seconds": seconds, "results": results(store, kind)}


def _finish(ref: dict, store: Path, log: Path) -> dict:
    """Run the sweep in `store` to its end (a rerun after the last kill) and compare it with `ref`."""
    done = lmc(store, "run", ref["sweep"], "--no-progress")
    log.write_text(log.read_text() + done.stdout + done.stderr if log.exists() else done.stdout + done.stderr)
    found = compare(results(store, ref["kind"]), ref["results"])
    found["exit"] = done.returncode
    found["tracebacks"] = tracebacks(log.read_text())
    return found


def kill_trials(kind: str, ref: dict, kills: int, rng, work: Path) -> tuple[dict, list[dict]]:
    """SIGKILL `lmcsweep run` of sweep `kind` `kills` times, each at a moment drawn uniformly from
    0.2 s to the reference run's wall time after its start; the next run (a rerun) is killed in
    turn, until one ends by itself: that store (an episode) is then compared with the reference,
    and the next kill starts a fresh store. A kill survives if its episode ends identical."""
    work.mkdir(parents=True, exist_ok=True)
    trials, episodes, landed, episode, attempts = [], [], 0, None, 0
    while landed < kills and attempts < 4 * kills:
        attempts += 1
        if episode is None:
            episode = {"store": work / f"{kind}-{len(episodes)}", "kills": []}
            episodes.append(episode)
        moment = round(rng.uniform(0.2, ref["seconds"]), 2)
        proc = start(episode["store"], "run", ref["sweep"], "--no-progress", log=work / f"{kind}-{len(episodes) - 1}.log")
        try:
            proc.wait(timeout=moment)
            trials.append({"part": "kill", "sweep": kind, "at_s": moment, "landed": False, "exit": proc.returncode})
            episode = None  # the run ended before the kill: this episode is finished
        except subprocess.TimeoutExpired:
            kill_group(proc)
            landed += 1
            episode["kills"].append(moment)
            trials.append({"part": "kill", "sweep": kind, "at_s": moment, "landed": True,
                           "episode": len(episodes) - 1})
    survived = lost = duplicated = differing = failed_reruns = traces = 0
    for i, ep in enumerate(episodes):
        if not ep["kills"]:
            continue
        found = _finish(ref, ep["store"], work / f"{kind}-{i}.log")
        ok = found["exit"] == 0 and not (found["lost"] or found["duplicated"] or found["differ"])
        survived += len(ep["kills"]) * ok
        lost += len(found["lost"])
        duplicated += len(found["duplicated"])
        differing += len(ep["kills"]) * bool(found["differ"])
        failed_reruns += found["exit"] != 0
        traces += found["tracebacks"]
        trials.append({"part": "kill-episode", "sweep": kind, "kills": ep["kills"], **found})
        shutil.rmtree(ep["store"], ignore_errors=True)
    moments = sorted(t["at_s"] for t in trials if t.get("landed"))
    row = {"what": f"SIGKILL, {kind} sweep", "tried": landed,
           "outcome": f"{survived} survived (kills at {moments[0] if moments else '-'}-{moments[-1] if moments else '-'} s "
                      f"of a {ref['seconds']:.1f} s run; {len([e for e in episodes if e['kills']])} reruns to the end)",
           "failures": {"lost": lost, "duplicated": duplicated, "not identical": differing,
                        "failed reruns": failed_reruns, "tracebacks": traces}}
    return row, trials


# file kind -> (sweep kinds it is damaged in, how its files are found in a finished store)
TARGETS = {
    "checkpoint": (["instability", "imp", "grid"], lambda s: sorted(s.glob("checkpoints/*/it*.pt"))),
    "mask": (["imp"], lambda s: sorted(s.glob("checkpoints/prune_*/mask.pt"))),
    "plan file": (["instability", "grid"], lambda s: sorted(s.glob("plans/**/plan.json"))),
    "curve (MLflow artifact)": (["instability"], lambda s: sorted(s.glob("artifacts/**/curve.json"))),
    "MLflow database": (["instability"], lambda s: [s / "mlflow.db"]),
}
HOWS = ["overwrite", "truncate", "delete"]
QUICK = {"checkpoint": "overwrite", "mask": "truncate", "plan file": "delete", "curve (MLflow artifact)": "overwrite",
         "MLflow database": "truncate"}  # --quick: one damage of each kind


def corruption_trials(refs: dict, rng, work: Path, quick: bool, files: list[str] | None = None):
    """Yields a row per file kind (of `files`, default all and resume points): its files damaged
    in copies of finished reference stores (--quick: one damage of each kind)."""
    for what, (kinds, find) in TARGETS.items():
        if files is not None and what not in files:
            continue
        trials = []
        for k, kind in enumerate(k for k in kinds if k in refs):
            for h, how in enumerate(HOWS):
                if quick and (k or how != QUICK[what]):
                    continue
                store = work / f"{what.split()[0]}-{kind}-{how}"
                shutil.rmtree(store, ignore_errors=True)
                shutil.copytree(refs[kind]["store"], store, symlinks=True)
                target = rng.choice(find(store))
                trials.append(_damaged(what, refs[kind], store, target, how, rng, repair=(k + h) % 2 == 0))
                shutil.rmtree(store, ignore_errors=True)
        yield _damage_row(what, trials), trials
    if files is not None and "resume point" not in files:
        return
    trials = [_resume_point(refs["instability"], work / f"resume-{how}", how, rng)
              for how in (HOWS[:1] if quick else HOWS)]
    yield _damage_row("resume point", trials), trials


def _damaged(what: str, ref: dict, store: Path, target: Path, how: str, rng, repair: bool) -> dict:
    """Damage `target`, then: `verify`; a repair (`verify --repair` or `run`); the results."""
    trial = {"part": "damage", "file": what, "sweep": ref["kind"], "path": str(target.relative_to(store)),
             "how": how, "done": damage(target, how, rng, span=4096 if what == "MLflow database" else 16)}
    found = lmc(store, "verify")
    said = found.stdout + found.stderr
    texts = [said]
    if what == "MLflow database" and how != "delete":
        # expected: one line (exit 3) from every command; nothing to repair from (a backup's job)
        answers = [found] + [lmc(store, *args) for args in (["query"], ["status"], ["run", ref["sweep"], "--no-progress"])]
        texts += [a.stdout + a.stderr for a in answers[1:]]
        # verify must find it (SQLite's own check); the other commands answer in one line or, when
        # they read no damaged page, as before the damage (checked below: used silently)
        trial["detected"] = found.returncode == 3 and len(found.stderr.strip().splitlines()) == 1 \
            and "MLflow database" in found.stderr
        trial["answers"] = [a.returncode for a in answers]
        trial["repaired"] = None
        after = compare(results(store, ref["kind"], metrics=False), ref["results"]) \
            if any(a.returncode == 0 for a in answers[1:]) else None
    else:
        if what == "MLflow database" or (what == "curve (MLflow artifact)"):
            trial["detected"] = None if what == "MLflow database" else found.returncode != 0
        else:
            trial["detected"] = found.returncode != 0 and (target.name in said or "plan" in said)
        if repair and what in ("checkpoint", "mask"):
            fixed = lmc(store, "verify", "--repair")
        else:
            fixed = lmc(store, "run", ref["sweep"], "--no-progress")
        texts.append(fixed.stdout + fixed.stderr)
        trial["repaired_by"] = "verify --repair" if fixed.args[-1] == "--repair" else "run"
        after = compare(results(store, ref["kind"], metrics=False), ref["results"])
        clean = lmc(store, "verify")
        texts.append(clean.stdout + clean.stderr)
        trial["repaired"] = fixed.returncode == 0 and clean.returncode == 0 and not after["differ"] \
            and not after["lost"]
        if what == "curve (MLflow artifact)":
            trial["repaired"] = None  # nothing reads it back: it stays as damaged
    if what == "MLflow database" and how != "delete":  # a command answered 0 from the damaged database
        trial["used_silently"] = bool(after and after["differ"])
    else:  # nothing said anything, and the next run gave other results
        trial["used_silently"] = bool(not trial["detected"] and after and after["differ"])
    trial["tracebacks"] = tracebacks(*texts)
    trial["said"] = [line for line in said.splitlines() if line.startswith(("damaged", "missing", "error"))][:3]
    return trial


def _resume_point(ref: dict, store: Path, how: str, rng) -> dict:
    """Kill a run while a job has a resume point, damage every resume point, rerun: the job must
    start again from a good state (the damaged point discarded) and end as in the reference."""
    shutil.rmtree(store, ignore_errors=True)
    trial = {"part": "damage", "file": "resume point", "sweep": ref["kind"], "how": how, "detected": False,
             "repaired": False, "used_silently": False, "tracebacks": 0}
    for _ in range(5):
        shutil.rmtree(store, ignore_errors=True)
        proc = start(store, "run", ref["sweep"], "--no-progress", log=store.with_suffix(".log"))
        deadline = time.time() + 120
        while not list(store.glob("checkpoints/*/resume.pt")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        kill_group(proc)
        points = list(store.glob("checkpoints/*/resume.pt"))
        if points and all(p.stat().st_size > 200 for p in points):
            break
    else:
        trial["done"] = "no resume point seen before the run ended"
        return trial
    trial["done"] = [damage(p, how, rng) for p in points]
    again = lmc(store, "run", ref["sweep"], "--no-progress")
    after = compare(results(store, ref["kind"]), ref["results"])
    ok = again.returncode == 0 and not (after["differ"] or after["lost"] or after["duplicated"])
    trial.update(detected=ok, repaired=ok, used_silently=again.returncode == 0 and bool(after["differ"]),
                 tracebacks=tracebacks(again.stdout, again.stderr), differ=after["differ"])
    shutil.rmtree(store, ignore_errors=True)
    return trial


def _damage_row(what: str, trials: list[dict]) -> dict:
    n = len(trials)
    det = [t["detected"] for t in trials if t["detected"] is not None]
    rep = [t["repaired"] for t in trials if t["repaired"] is not None]
    unchecked = what.startswith("curve")
    outcome = (f"{sum(det)} of {len(det)} found" if det else "nothing to find") + \
              (f", {sum(rep)} of {len(rep)} repaired to identical results" if rep else "")
    if what == "MLflow database":
        outcome = f"{sum(det)} of {len(det)} damaged found by verify (one line, exit 3); " \
                  f"{sum(rep)} of {len(rep)} deleted: the next run computes all again, identical"
    if unchecked:
        outcome = f"{len(det) - sum(det)} of {len(det)} not found: no checksum, nothing in lmcsweep reads it back"
    failures = {"undetected": 0 if unchecked else len(det) - sum(det), "not repaired": len(rep) - sum(rep),
                "used silently": sum(t["used_silently"] for t in trials),
                "tracebacks": sum(t["tracebacks"] for t in trials)}
    return {"what": f"damaged {what}", "tried": n, "outcome": outcome, "failures": failures}


def full_disk_trials(ref: dict, work: Path, free_mb: list[float]) -> tuple[dict, list[dict]]:
    """The instability sweep on a 20 MB tmpfs filled to leave `free_mb` each time."""
    from lmcsweep.store import check_file

    if os.geteuid() != 0:
        return {"what": "full disk (tmpfs)", "tried": 0, "outcome": "skipped: mounting a tmpfs needs root",
                "failures": {}}, []
    trials = []
    for free in free_mb:
        disk = work / f"tmpfs-{free}"
        disk.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], check=True)
        try:
            store = disk / "store"
            with open(disk / "filler", "wb") as f:
                f.write(b"\0" * int((20 - free) * 2 ** 20))
            full = lmc(store, "run", ref["sweep"], "--no-progress")
            lines = full.stderr.strip().splitlines()
            damaged = [str(p.relative_to(store)) for p in store.rglob("*")
                       if p.is_file() and p.suffix in (".pt", ".json") and check_file(p) == "damaged"]
            db_ok = _quick_check(store / "mlflow.db")
            (disk / "filler").unlink()
            checked = lmc(store, "verify")
            again = lmc(store, "run", ref["sweep"], "--no-progress")
            after = compare(results(store, "instability"), ref["results"])
            trials.append({"part": "full disk", "free_mb": free, "exit": full.returncode, "lines": len(lines),
                           "said": lines[:3], "enospc": any("ENOSPC" in l for l in lines), "damaged": damaged,
                           "database_ok": db_ok, "verify_exit": checked.returncode, "rerun_exit": again.returncode,
                           "tracebacks": tracebacks(full.stderr, full.stdout, again.stdout, again.stderr), **after})
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=True)
    ran_out = [t for t in trials if t["exit"] != 0]
    one_line = sum(t["exit"] == 3 and t["lines"] == 1 and t["enospc"] for t in ran_out)
    finished = sum(t["rerun_exit"] == 0 and not t["differ"] and not t["lost"] for t in trials)
    row = {"what": "full disk (tmpfs)", "tried": len(trials),
           "outcome": f"{len(ran_out)} ran out of space: {one_line} one line naming ENOSPC (exit 3); "
                      f"{finished} finished identical once space was freed",
           "failures": {"not one line": len(ran_out) - one_line, "tracebacks": sum(t["tracebacks"] for t in trials),
                        "damaged files": sum(len(t["damaged"]) + (not t["database_ok"]) + (t["verify_exit"] != 0)
                                             for t in trials),
                        "not identical": len(trials) - finished,
                        "lost": sum(len(t["lost"]) for t in trials),
                        "duplicated": sum(len(t["duplicated"]) for t in trials)}}
    return row, trials


def _quick_check(db: Path) -> bool:
    if not db.exists():
        return True
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def fuzz_trial(n: int, work: Path) -> tuple[dict, list[dict]]:
    """`n` malformed sweep files (the generator of tests/test_fuzz.py) through the validator: each
    answered in under 2 s (a hang: over 2 s, cut at 10 s), in lines FILE:LINE: field: message."""
    import signal

    sys.path.insert(0, str(ROOT / "tests"))
    from test_fuzz import _line_pattern, malformed_files

    from lmcsweep.config import ConfigError, load_sweep

    def alarm(*_):
        raise TimeoutError

    work.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGALRM, alarm)
    rejected = accepted = traces = hangs = bad_lines = 0
    slowest, trials = 0.0, []
    try:
        for i, data in enumerate(malformed_files(n)):
            path = work / f"f{i}.yaml"
            path.write_bytes(data)
            began = time.perf_counter()
            signal.alarm(10)
            try:
                load_sweep(path)
                accepted += 1
            except ConfigError as exc:
                rejected += 1
                pattern = _line_pattern(path)
                bad_lines += not all(pattern.match(line) for line in str(exc).split("\n"))
            except TimeoutError:
                hangs += 1
                trials.append({"part": "fuzz", "file": i, "hang": True, "head": data[:200]})
            except Exception as exc:  # noqa: BLE001 -- what the suite counts: a traceback
                traces += 1
                trials.append({"part": "fuzz", "file": i, "traceback": repr(exc)[:300], "head": data[:200]})
            finally:
                signal.alarm(0)
            took = time.perf_counter() - began
            slowest = max(slowest, took)
            if took > 2:
                hangs += 1
            path.unlink()
    finally:
        signal.signal(signal.SIGALRM, previous)
    row = {"what": "fuzz: malformed sweep files", "tried": n,
           "outcome": f"{rejected} rejected in FILE:LINE: field: message lines, {accepted} still valid; "
                      f"slowest {slowest:.2f} s",
           "failures": {"tracebacks": traces, "hangs (> 2 s)": hangs, "malformed messages": bad_lines}}
    return row, trials
