"""The job queue's costs, and workers against one process.

    python bench/workers.py overhead [--jobs 300]       claim-to-complete per job: SQLite, PostgreSQL
    python bench/workers.py swarm [--workers 1000 --jobs 100000 --processes 8]
                                                         many workers claiming no-op jobs from PostgreSQL
    python bench/workers.py quickstart [--repeats 3]    `lmcsweep run` vs `run --workers 2`, wall time

PostgreSQL is started here on loopback (Debian's postgresql 15, as tests/services.py does). Prints
medians and ratios; the machine is shared, so compare runs made side by side.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from services import create_db, postgres  # noqa: E402

from lmcsweep.queue import DONE, Queue, default_uri  # noqa: E402


def _jobs(n: int) -> list[dict]:
    return [{"hash": f"noop_{i:016x}", "kind": "noop", "parents": []} for i in range(n)]


def overhead(uri: str, n: int) -> float:
    """Median ms from claim to complete of one no-op job, one worker."""
    queue = Queue(uri)
    queue.create()
    queue.enqueue("bench", None, _jobs(n), set())
    queue.register("w")
    times = []
    while True:
        start = time.perf_counter()
        rows = queue.claim("w")
        if not rows:
            break
        queue.complete("w", rows[0])
        times.append((time.perf_counter() - start) * 1000)
    assert queue.counts("bench") == {DONE: n}
    return statistics.median(times)


def _swarm_process(uri: str, names: list[str], out) -> None:
    queue = Queue(uri)
    done = []
    while True:
        claimed = False
        for name in names:  # this process's workers take turns, each one claim at a time
            rows = queue.claim(name)
            if rows:
                claimed = True
                queue.complete(name, rows[0])
                done.append(rows[0]["hash"])
        if not claimed:
            break
    out.put(done)


def swarm(uri: str, workers: int, jobs: int, processes: int) -> dict[str, float]:
    queue = Queue(uri)
    queue.create()
    queue.enqueue("bench", None, _jobs(jobs), set())
    names = [f"w{i}" for i in range(workers)]
    out = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_swarm_process, args=(uri, names[p::processes], out))
             for p in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    done = [h for _ in procs for h in out.get()]
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    return {"claims_per_s": len(done) / seconds, "twice": len(done) - len(set(done)),
            "lost": jobs - len(set(done)), "seconds": seconds}


def quickstart(repeats: int) -> None:
    lmcsweep = Path(sys.executable).with_name("lmcsweep")
    one, two = [], []
    for _ in range(repeats):
        for workers, into in ((None, one), (2, two)):
            with tempfile.TemporaryDirectory() as tmp:
                args = [str(lmcsweep), "--store", tmp, "run", "--no-progress", str(ROOT / "sweeps/quickstart.yaml")]
                if workers:
                    args[4:5] = ["--workers", str(workers)]
                start = time.perf_counter()
                subprocess.run(args, check=True, capture_output=True)
                into.append(time.perf_counter() - start)
    print(f"quickstart: one process {statistics.median(one):.1f} s, 2 workers {statistics.median(two):.1f} s "
          f"(median of {repeats}; 2 workers take {statistics.median(two) / statistics.median(one):.2f}x the time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "swarm", "quickstart"])
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "quickstart":
        quickstart(args.repeats)
        return
    folder = Path(tempfile.mkdtemp(prefix="lmcsweep-bench-"))
    folder.chmod(0o755)
    try:
        with postgres(folder / "pg") as base:
            if args.what == "overhead":
                n = args.jobs or 300
                lite = overhead(default_uri(folder / "lite"), n)
                pg = overhead(create_db(base, "queue"), n)
                print(f"claim-to-complete per job ({n} jobs, one worker): SQLite {lite:.1f} ms, "
                      f"PostgreSQL {pg:.1f} ms ({pg / lite:.2f}x)")
            else:
                n = args.jobs or 100_000
                r = swarm(create_db(base, "queue"), args.workers, n, args.processes)
                print(f"swarm: {args.workers} workers in {args.processes} processes, {n} no-op jobs: "
                      f"{r['claims_per_s']:.0f} claims/s ({r['seconds']:.0f} s), {r['twice']} claimed twice, "
                      f"{r['lost']} lost")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
