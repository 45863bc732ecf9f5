"""The reliability suite: what the README's "Reliability" table is made from. Four parts, on three
tiny sweeps (LeNet on 600 Fashion-MNIST images, 60 iterations: an instability sweep, an IMP sweep
with both controls, a grid search), each compared with an uninterrupted reference run of the same
sweep in a store of its own:

1. kills: SIGKILL to the whole process group of `lmcsweep run` at random moments (seeded, listed),
   each followed by a rerun that is killed in its turn, until a rerun finishes; then metric
   histories, checkpoint hashes and `lmcsweep query` must equal the reference's, every job the
   reference finished must be FINISHED once (lost: missing; duplicated: more than once).
2. damage: a file of each kind the store writes overwritten (16 bytes), truncated or deleted in a
   finished store: found by `lmcsweep verify`, repaired by `verify --repair` or the next run.
3. a full disk: the store on a small tmpfs: one line naming ENOSPC, nothing stored damaged, and
   once space is freed the same command finishes with the reference's results.
4. fuzz: the malformed sweep files of tests/test_fuzz.py through the validator.

Prints a markdown table; exits 1 if a failure figure (lost, duplicated, differing, undetected,
used silently, tracebacks, hangs, ...) is not 0.

    .venv/bin/python bench/reliability.py [--quick] [--seed 16] [--kills 12] [--work DIR] [--record FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _reliability import write_sweep  # bench/ is on sys.path when a script in it runs
from _reliability_parts import corruption_trials, full_disk_trials, fuzz_trial, kill_trials, reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small size the tests run (a minute or two)")
    parser.add_argument("--seed", type=int, default=16, help="seeds the kill moments and damaged places")
    parser.add_argument("--kills", type=int, help="kills per sweep kind (default 12; --quick: 3, instability only)")
    parser.add_argument("--work", type=Path, help="folder for the stores (default: a temporary one, removed)")
    parser.add_argument("--record", type=Path, help="write every trial (kill moments, damage done) as JSON here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lmcsweep-reliability-"))
    try:
        rows, record = run_suite(work, args.quick, args.seed, args.kills)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.record:
        args.record.write_text(json.dumps(record, indent=1, default=str))
    print(table(rows))
    bad = {k: v for row in rows for k, v in row["failures"].items() if v}
    return 1 if bad else 0


def run_suite(work: Path, quick: bool, seed: int, kills: int | None) -> tuple[list[dict], dict]:
    rng = random.Random(seed)
    started = time.time()
    kinds = ["instability", "imp"] if quick else ["instability", "imp", "grid"]
    refs = {kind: reference(kind, write_sweep(kind, work / "sweeps"), work / f"ref-{kind}") for kind in kinds}
    say(f"references: " + ", ".join(f"{k} {r['seconds']:.1f}s" for k, r in refs.items()))
    rows, record = [], {"seed": seed, "quick": quick, "trials": []}
    for kind in (["instability"] if quick else kinds):
        row, trials = kill_trials(kind, refs[kind], kills or (3 if quick else 12), rng, work / "kills")
        rows.append(row)
        record["trials"] += trials
        say(f"kills {kind}: {row['outcome']}")
    for row, trials in corruption_trials(refs, rng, work / "damage", quick):
        rows.append(row)
        record["trials"] += trials
        say(f"damage {row['what']}: {row['outcome']}")
    row, trials = full_disk_trials(refs["instability"], work / "disk", [2.0] if quick else [0.5, 2.0, 5.0])
    rows.append(row)
    record["trials"] += trials
    say(f"full disk: {row['outcome']}")
    row, trials = fuzz_trial(200 if quick else 1300, work / "fuzz")
    rows.append(row)
    record["trials"] += trials
    record["seconds"] = round(time.time() - started)
    say(f"done in {record['seconds']} s")
    return rows, record


def table(rows: list[dict]) -> str:
    """The markdown table: a row per check, its failure figures (all must be 0) in the last column."""
    lines = ["| Check | Tried | Outcome | Failures (all must be 0) |", "|---|---:|---|---|"]
    for row in rows:
        failures = ", ".join(f"{v} {k}" for k, v in row["failures"].items()) or "-"
        lines.append(f"| {row['what']} | {row['tried']} | {row['outcome']} | {failures} |")
    return "\n".join(lines)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
