"""What the reliability suite (`bench/reliability.py`) shares: its three tiny sweeps, the console
entry run in a subprocess (its own process group, so a SIGKILL reaches the run, its copy workers
and its tracking process), and a store's results taken down to what must not change between an
interrupted or repaired run and an uninterrupted one: every FINISHED job run's metric histories,
the SHA-256 of every checkpoint and mask, and `lmcsweep query`'s output without run ids."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}

_HEAD = """\
experiment: reliability
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 60it, batch_size: 60, eval_every: 30it, checkpoint_every: 20it}
"""
# name -> (sweep file text, `lmcsweep query --kind` of its records)
SWEEPS = {
    "instability": ("name: rel-instability\n" + _HEAD + "replicates: 1\n"
                    "instability: {rewind: [0it, 20it], copies: 2, alphas: 5, train_examples: 300}\n", "instability"),
    "imp": ("name: rel-imp\n" + _HEAD + "imp: {levels: 2, rewind: [20it], instability: false, "
            "controls: [random_prune, random_reinit]}\n", "imp"),
    "grid": ("name: rel-grid\n" + _HEAD + "instability: {rewind: [0it], copies: 2, alphas: 3, splits: [test]}\n"
             "search:\n  sampler: grid\n  space: {train.lr: [0.0012, 0.003]}\n"
             "  objective: {metric: instability, split: test, rewind: 0it}\n", "instability"),
}


def sweep_name(kind: str) -> str:
    return f"rel-{kind}"


def write_sweep(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.yaml"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(SWEEPS[kind][0])
    return path


def lmc(store: Path, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`lmcsweep --store STORE ARGS` through the console entry, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def start(store: Path, *args, log: Path) -> subprocess.Popen:
    """`lmcsweep --store STORE ARGS` started in a process group of its own, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                                env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the whole process group of `proc`; returns once every process of it is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"processes of group {proc.pid} outlived SIGKILL")


def tracebacks(*texts: str) -> int:
    return sum(t.count("Traceback (most recent call last)") for t in texts)


def checkpoint_hashes(store: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every checkpoint and mask (not resume points or checksums)."""
    out = {}
    for path in sorted((store / "checkpoints").glob("*/*.pt")):
        if path.name != "resume.pt":
            out[str(path.relative_to(store))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def query_rows(store: Path, kind: str) -> list[dict]:
    """`lmcsweep query --sweep NAME --kind K --format csv`, rows without run ids (in process)."""
    from click.testing import CliRunner

    from lmcsweep.cli import main

    result = CliRunner().invoke(main, ["--store", str(store), "query", "--sweep", sweep_name(kind),
                                       "--kind", SWEEPS[kind][1], "--format", "csv"])
    if result.exit_code != 0:
        return [{"error": result.output.strip()[-300:]}]
    return sorted(({k: v for k, v in row.items() if k != "run_id"}
                   for row in csv.DictReader(io.StringIO(result.output))), key=lambda r: sorted(r.items()))


def job_runs(store: Path, kind: str) -> list:
    """The MLflow runs of every job of the sweep (not its sweep run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`lmcsweep.sweep` = '{sweep_name(kind)}'", max_results=10000)
    return [r for r in runs if "lmcsweep.job" in r.data.tags and r.data.tags.get("lmcsweep.kind") != "sweep"]


def metric_histories(store: Path, runs: list) -> dict[str, dict]:
    """job hash -> {metric: sorted (step, value)} of its FINISHED runs (a job with two has both)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    out: dict[str, list] = {}
    for run in runs:
        if run.info.status == "FINISHED":
            out.setdefault(run.data.tags["lmcsweep.job"], []).append(
                {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                 for key in sorted(run.data.metrics)})
    return {job: sorted(h, key=repr) for job, h in out.items()}


def results(store: Path, kind: str, metrics: bool = True) -> dict:
    """What must be identical to an uninterrupted run: checkpoint hashes, query rows, and (with
    `metrics`) the metric histories; plus the FINISHED count per job (lost and duplicated jobs)."""
    try:
        runs = job_runs(store, kind) if (store / "mlflow.db").exists() else []
    except Exception as exc:  # noqa: BLE001 -- a store MLflow cannot open: counted, not raised
        return {"unreadable": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    finished = Counter(r.data.tags["lmcsweep.job"] for r in runs if r.info.status == "FINISHED")
    return {"checkpoints": checkpoint_hashes(store), "query": query_rows(store, kind),
            "metrics": metric_histories(store, runs) if metrics else None, "finished": finished,
            "running": sum(r.info.status == "RUNNING" for r in runs),
            "resume_points": len(list((store / "checkpoints").glob("*/resume.pt")))}


def compare(got: dict, reference: dict) -> dict:
    """Lost jobs (FINISHED in the reference, not here), duplicated ones (more than one FINISHED
    run), and which results differ from the reference's."""
    if "unreadable" in got:
        return {"lost": sorted(reference["finished"]), "duplicated": [], "differ": [got["unreadable"]]}
    lost = sorted(set(reference["finished"]) - set(got["finished"]))
    duplicated = sorted(job for job, n in got["finished"].items() if n > 1)
    differ = [key for key in ("checkpoints", "query", "metrics")
              if got[key] is not None and reference[key] is not None and got[key] != reference[key]]
    if got["running"] or got["resume_points"]:
        differ.append("left running" if got["running"] else "resume points left")
    return {"lost": lost, "duplicated": duplicated, "differ": differ}


def damage(path: Path, how: str, rng, span: int = 16) -> str:
    """Damage `path` in place: 'overwrite' `span` bytes (aligned to `span`) at a random place in
    its middle half, 'truncate' it to a random length, or 'delete' it. Returns what was done."""
    size = path.stat().st_size
    if how == "overwrite":
        at = rng.randrange(size // 4, max(size // 4 + 1, 3 * size // 4 - span)) // span * span
        with open(path, "r+b") as f:
            f.seek(at)
            old = f.read(span)
            f.seek(at)
            f.write(bytes(b ^ 0xA5 for b in old))  # every byte changed
        return f"{span} bytes at {at} of {size}"
    if how == "truncate":
        keep = rng.randrange(0, size)
        os.truncate(path, keep)
        return f"cut to {keep} of {size} bytes"
    path.unlink()
    return "deleted"
