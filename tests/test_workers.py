"""One sweep on many workers through the job queue, end to end through the CLI: every job ends as
exactly one computed FINISHED run, with the bits of a one-process run; a worker killed mid-job
loses nothing (its lease expires, another worker resumes the job from its checkpoint)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmcsweep.config import load_sweep
from lmcsweep.plan.build import build_plan
from lmcsweep.queue import Queue, default_uri
from lmcsweep.tracking import Tracker

SWEEP = """\
name: many
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 600, subset_test: 300}
train: {iterations: 200it, batch_size: 60, eval_every: 100it, checkpoint_every: 20it, model: {hidden: [64]}}
replicates: 2
instability: {rewind: [0it, 20it], copies: 2, alphas: 4, train_examples: 300}
"""


def _cli(store: Path, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), *map(str, args)],
                          capture_output=True, text=True, timeout=600, **kw)


def _weights(store: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every final checkpoint and the dense networks' rewind checkpoints, by relative path."""
    out = {}
    for path in sorted((store / "checkpoints").rglob("it*.pt")):
        out[str(path.relative_to(store))] = torch.load(path, weights_only=False)["model"]
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a)


def _computed_runs(store: Path) -> list[str]:
    return [r.data.tags["lmcsweep.job"] for r in Tracker(root=store).runs_of_sweep("many", status="FINISHED")
            if r.data.tags.get("lmcsweep.origin") == "computed"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    path = root / "sweep.yaml"
    path.write_text(SWEEP)
    one = root / "one"
    out = _cli(one, "run", "--no-progress", path)
    assert out.returncode == 0, out.stderr
    return path, one


LINE = re.compile(r"^\[networks (\d+)/(\d+), interpolations (\d+)/(\d+)\] computed (.+?)  \d+\.\ds  on worker \d+")
SUMMARY = re.compile(r"^many: (\d+) jobs run, 0 reused from the store, (\d+) already done, 0 failed, 0 blocked "
                     r"\(\d+s, (\d) workers\)$", re.M)


def test_two_workers_shown_by_name_ctrl_c_and_resumed_with_the_bits_of_one_process(reference, tmp_path):
    """The driver's display through the CLI (stderr a pipe: a line per job as it ends, with its
    name, worker and time; the summary by name); Ctrl-C of the driver: one line, its workers
    stopped, their claims back in the queue; the rerun computes the rest, each job once, with the
    bits of a one-process run."""
    path, one = reference
    many = tmp_path / "many"
    names = sorted(j.name for j in build_plan(load_sweep(path)).jobs)
    proc = subprocess.Popen([sys.executable, "-m", "lmcsweep.cli", "--store", str(many), "run", "--workers", "2",
                             "--no-progress", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    first = proc.stderr.readline()                                  # a job has ended: interrupt
    assert LINE.match(first), first
    os.killpg(proc.pid, signal.SIGINT)                              # as a terminal's Ctrl-C (workers: own sessions)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted; run the same command"), err
    counts = Queue(default_uri(many)).counts("many")
    assert "claimed" not in counts and 1 <= counts["done"] < 14, counts   # the workers' claims came back at once
    workers = subprocess.run(["pgrep", "-f", f"--store {many} worker"], capture_output=True, text=True).stdout
    assert not workers.strip(), workers

    rerun = _cli(many, "run", "--workers", "2", "--no-progress", path)
    assert rerun.returncode == 0, rerun.stderr
    summary = SUMMARY.search(rerun.stdout)   # (already done: also a job whose run finished as Ctrl-C came)
    assert summary and int(summary[1]) + int(summary[2]) == 14 and int(summary[2]) >= counts["done"], rerun.stdout
    lines = [LINE.match(line) for line in rerun.stderr.splitlines()]
    assert all(lines) and len(lines) == int(summary[1]), rerun.stderr  # a line per job run, as it ended
    done = [(int(m[1]), int(m[3])) for m in lines]
    assert done == sorted(done) and [int(m[2]) + int(m[4]) for m in lines] == [len(lines)] * len(lines)
    computed = rerun.stdout.splitlines()[1]
    assert computed.startswith(f"  computed ({len(lines)}): ")
    assert sorted(m[5] for m in lines) == sorted(computed.split(": ", 1)[1].split(", ")) and set(computed.split(": ", 1)[1].split(", ")) < set(names)
    runs = _computed_runs(many)
    assert len(runs) == len(set(runs)) == 14                       # each job exactly one FINISHED run
    assert sorted(runs) == sorted(_computed_runs(one))
    assert _same(_weights(one), _weights(many))
    query = [_cli(s, "query", "--sweep", "many", "--format", "csv").stdout for s in (one, many)]
    strip = lambda text: sorted(",".join(x for i, x in enumerate(line.split(",")) if i != 1)  # noqa: E731
                                for line in text.splitlines())     # (column 1: the run id)
    assert strip(query[0]) == strip(query[1])
    again = _cli(many, "run", "--workers", "2", path)               # nothing left: nothing recomputed
    assert again.returncode == 0 and again.stdout.startswith("many: nothing to do (14 jobs already done)")
    assert len(_computed_runs(many)) == 14


def test_a_worker_killed_mid_job_is_resumed_by_another(reference, tmp_path):
    path, one = reference
    store = tmp_path / "killed"
    assert _cli(store, "run", "--plan-only", path).returncode == 0
    queue = Queue(default_uri(store))
    command = [sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "worker", "--lease", "4"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list((store / "checkpoints").glob("train_*/resume.pt")):   # mid-training, past a checkpoint
            assert time.time() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert queue.counts("many").get("claimed", 0) >= 1           # its claims wait for their leases
        second = _cli(store, "worker", "--lease", "4")
        assert second.returncode == 0, second.stderr
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert queue.counts("many") == {"done": 14}
    runs = _computed_runs(store)
    assert len(runs) == len(set(runs)) == 14
    resumed = [r for r in Tracker(root=store).runs_of_sweep("many", status="FINISHED")
               if "lmcsweep.resumed_from" in r.data.tags]
    assert resumed                                                    # from its checkpoint, not from scratch
    assert _same(_weights(one), _weights(store))
    killed = Tracker(root=store).runs_of_sweep("many", status="KILLED")
    assert killed                                                     # the dead worker's run, marked


def test_three_workers_on_postgresql_and_an_mlflow_server(reference, tmp_path):
    """The cluster set-up on one machine: the MLflow tracking server backed by PostgreSQL, the
    job queue on PostgreSQL, checkpoints in a shared folder."""
    import shutil
    import tempfile

    from services import create_db, mlflow_server, postgres

    path, one = reference
    folder = Path(tempfile.mkdtemp(prefix="lmcsweep-pg-"))
    folder.chmod(0o755)                                       # where user postgres can reach it
    try:
        with postgres(folder / "pg") as base:
            tracking, queue_uri = create_db(base, "mlflow"), create_db(base, "queue")
            with mlflow_server(tracking, tmp_path / "artifacts") as server:
                store = tmp_path / "shared"
                out = _cli(store, "--tracking-uri", server, "run", "--workers", "3", "--queue-uri", queue_uri, path)
                assert out.returncode == 0, out.stderr
                assert re.search(r"^many: 14 jobs run, 0 reused from the store, 0 already done, 0 failed, 0 blocked "
                                 r"\(\d+s, 3 workers\)$", out.stdout, re.M), out.stdout   # (MLflow adds "View run" lines)
                assert not (store / "mlflow.db").exists() and not (store / "queue.db").exists()
                assert Queue(queue_uri).counts("many") == {"done": 14}
                runs = [r.data.tags["lmcsweep.job"] for r in Tracker(server, store).runs_of_sweep("many", status="FINISHED")
                        if r.data.tags.get("lmcsweep.origin") == "computed"]
                assert len(runs) == len(set(runs)) == 14
                assert _same(_weights(one), _weights(store))
                status = _cli(store, "--tracking-uri", server, "status", "many")
                assert status.returncode == 0 and " 14 " in status.stdout, status.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_workers_as_a_slurm_array_and_a_requeued_task(reference, tmp_path):
    """`--executor slurm`: the workers are a SLURM job array submitted through submitit, with the
    sbatch options of the sweep file's `slurm` section, the command line's over them; one task
    requeued mid-job (`scontrol requeue`, as a preemption) changes nothing in the result."""
    import threading

    from services import slurm_cluster

    path, one = reference
    placed = tmp_path / "placed.yaml"   # the same sweep, where its workers run named in the file
    placed.write_text(path.read_text() + "slurm: {partition: debug, time: 30, cpus_per_task: 1, "
                                          "extra: [comment=lmc-test, requeue]}\n")
    store = tmp_path / "slurm"
    with slurm_cluster(tmp_path / "cluster") as env:
        requeued: list[str] = []
        shown: list[str] = []

        def requeue_one() -> None:  # once a dense network is mid-training, requeue the task holding it
            deadline = time.time() + 240
            while time.time() < deadline and not requeued:
                if list((store / "checkpoints").glob("train_*/resume.pt")):
                    ids = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], env=env, capture_output=True,
                                         text=True).stdout.split()
                    if ids:
                        shown.append(subprocess.run(["scontrol", "show", "job", ids[0]], env=env,
                                                    capture_output=True, text=True).stdout)
                        subprocess.run(["scontrol", "requeue", ids[0]], env=env, capture_output=True)
                        requeued.append(ids[0])
                time.sleep(0.2)
        watcher = threading.Thread(target=requeue_one, daemon=True)
        watcher.start()
        out = subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(store), "run", "--workers", "2",
                              "--executor", "slurm", "--slurm", "time=10", placed],
                             env=env, capture_output=True, text=True, timeout=600)
        watcher.join()
        refused = subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(tmp_path / "refused"), "run",
                                  "--workers", "1", "--executor", "slurm", "--slurm", "partition=nowhere", path],
                                 env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = SUMMARY.search(out.stdout)                                  # (a requeued job may show as done before)
    assert summary and int(summary[1]) + int(summary[2]) == 14 and summary[3] == "2", out.stdout
    assert requeued
    runs = _computed_runs(store)
    assert len(runs) == len(set(runs)) == 14
    assert _same(_weights(one), _weights(store))
    assert refused.returncode == 2 and "sbatch refused" in refused.stderr and "Traceback" not in refused.stderr
    script = next((store / "slurm").glob("*_submission.sh")).read_text()   # what submitit gave sbatch
    for line in ("--partition=debug", "--time=10", "--cpus-per-task=1", "--comment=lmc-test", "--requeue"):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "--time=30" not in script                                      # the command line's time won
    assert "Partition=debug" in shown[0] and "TimeLimit=00:10:00" in shown[0] and "Comment=lmc-test" in shown[0]


def test_sbatch_options_are_checked_and_hash_nothing(tmp_path):
    """A `slurm` section's bad value is a FILE:LINE error, a bad `--slurm` value one line, both before
    anything is written; the section changes no job hash, no study name, no sweep fingerprint."""
    from lmcsweep.config import ConfigError, load_sweep
    from lmcsweep.identity import sweep_fingerprint
    from lmcsweep.plan.build import build_plan
    from lmcsweep.search.study import study_name

    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text() + "slurm:\n  partition: debug\n  time: 1.5\n  mem: 32 GB\n")
    with pytest.raises(ConfigError) as bad_file:
        load_sweep(bad)
    assert str(bad_file.value).splitlines() == [f"{bad}:10: slurm.time: input should be a valid integer, got a number "
                                       "with a fractional part",
                                       f"{bad}:11: slurm.mem: a size as sbatch's --mem takes it: 32G, 8000M"]
    good = tmp_path / "good.yaml"
    good.write_text(path.read_text() + "slurm: {partition: gpu, gpus_per_task: 1, mem: 32G}\n")
    out = _cli(tmp_path / "store", "run", "--workers", "1", "--executor", "slurm", "--slurm", "cpus-per-task=many", good)
    assert out.returncode == 2 and not (tmp_path / "store").exists()
    assert out.stderr.strip().splitlines() == ["error: --slurm cpus-per-task: input should be a valid integer, "
                                               "unable to parse string as an integer"]
    plain, placed = load_sweep(path), load_sweep(good)
    assert placed.slurm.gpus_per_task == 1
    assert [j.hash for j in build_plan(plain).jobs] == [j.hash for j in build_plan(placed).jobs]
    assert sweep_fingerprint(plain) == sweep_fingerprint(placed)
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    grid_placed = tmp_path / "grid2.yaml"
    grid_placed.write_text(GRID + "slurm: {partition: gpu}\n")
    assert study_name(load_sweep(grid)) == study_name(load_sweep(grid_placed))


GRID = """\
name: grid
experiment: tests
preset: lenet
data: {dataset: fashion_mnist, subset_train: 300, subset_test: 200}
train: {iterations: 20it, batch_size: 60, eval_every: 10it, checkpoint_every: 10it, model: {hidden: [16]}}
replicates: 1
instability: {rewind: [0it], copies: 2, alphas: 3, train_examples: 200}
search:
  sampler: grid
  space: {train.lr: [0.001, 0.002], train.batch_size: [30, 60]}
  objective: {metric: instability, split: test, rewind: 0it, direction: minimize}
"""


def test_a_grid_search_on_three_workers_asks_each_point_once(tmp_path):
    import optuna

    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    store = tmp_path / "store"
    out = _cli(store, "run", "--workers", "3", path)
    assert out.returncode == 0, out.stderr
    assert re.match(r"grid: 16 jobs run, 0 reused from the store, 0 already done, 0 failed, 0 blocked \(\d+s, 3 workers\)",
                    out.stdout), out.stdout
    assert len([line for line in out.stderr.splitlines() if line.startswith("[networks ")]) == 16, out.stderr
    study = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{store / 'optuna.db'}")[0],
                              storage=f"sqlite:///{store / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted((t.params["train.lr"], t.params["train.batch_size"]) for t in trials) == \
        [(0.001, 30), (0.001, 60), (0.002, 30), (0.002, 60)]
    for t in trials:                                # the end-of-run summary: every trial, then the best
        assert re.search(rf"trial {t.number}\s+lr={t.params['train.lr']} batch_size={t.params['train.batch_size']}\s+"
                         rf"objective {t.value:.6g}\s+COMPLETE", out.stdout), out.stdout
    best = min(trials, key=lambda t: t.value)
    assert f"best: trial {best.number} (train.lr={best.params['train.lr']} train.batch_size=" \
           f"{best.params['train.batch_size']}): objective {best.value:.6g}" in out.stdout, out.stdout
    runs = [r.data.tags["lmcsweep.job"] for r in Tracker(root=store).runs_of_sweep("grid", status="FINISHED")
            if r.data.tags.get("lmcsweep.origin") == "computed"]
    assert len(runs) == len(set(runs)) == 16


def test_sbatch_refusing_the_workers_is_one_line_and_writes_nothing(tmp_path, capfd):
    """A submission sbatch refuses (a partition the cluster lacks) is found by `sbatch --test-only`
    before the driver writes anything: sbatch's message in one line, no store; sbatch's own error
    lines never reach the terminal, even where the submission itself is refused."""
    from services import slurm_cluster

    from lmcsweep import slurm
    from lmcsweep.config import SlurmConfig

    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP + "slurm: {partition: nowhere}\n")
    with slurm_cluster(tmp_path / "cluster") as env:
        out = subprocess.run([sys.executable, "-m", "lmcsweep.cli", "--store", str(tmp_path / "store"), "run",
                              "--workers", "2", "--executor", "slurm", path],
                             env=env, capture_output=True, text=True, timeout=120)
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]
        try:
            slurm.check(2, SlurmConfig(partition="debug", time=5))      # a submission it takes passes
            with pytest.raises(slurm.SlurmError) as refused:
                slurm.submit(["true"], 2, tmp_path / "jobs", SlurmConfig(partition="nowhere"))
        finally:
            os.environ.pop("SLURM_CONF") if old is None else os.environ.update(SLURM_CONF=old)
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    assert out.stderr.splitlines() == ["error: sbatch refused the submission: invalid partition specified: nowhere; "
                                       "allocation failure: Invalid partition name specified"], out.stderr
    assert not (tmp_path / "store").exists()
    assert str(refused.value) == ("sbatch refused the submission: invalid partition specified: nowhere; "
                                  "Batch job submission failed: Invalid partition name specified")
    assert "sbatch: error" not in capfd.readouterr().err


def test_gpus_that_are_not_here_are_one_line_and_a_dry_run_runs_nothing(tmp_path):
    """`--gpus` naming what this machine lacks, or where it means nothing, is one line before anything
    is written; `--dry-run` with workers prints the plan (it ran the whole sweep before)."""
    from lmcsweep.gpus import visible_gpus

    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    store = tmp_path / "store"
    lines = {}
    for args in (["--gpus", "0,x"], ["--gpus", "1,1"], ["--gpus", "99", "--workers", "2"],
                 ["--gpus", "0", "--executor", "slurm"], ["--gpus", "0", "--plan-only"]):
        out = _cli(store, "run", *args, path)
        assert out.returncode == 2 and out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
        lines[" ".join(args[1:])] = out.stderr.strip()
    assert lines["0,x"] == "error: --gpus 0,x: 'x' is not a GPU; give their numbers, e.g. --gpus 0,1,2,3 (or their " \
                           "GPU-/MIG- UUIDs)"
    assert lines["1,1"] == "error: --gpus 1,1: GPU 1 is named twice; more workers per GPU: --workers N"
    assert lines["99 --workers 2"] == ("error: --gpus 99: torch sees no CUDA GPU on this machine; leave out --gpus to run the "
                           "workers on the CPU" if not visible_gpus() else
                           f"error: --gpus 99: this machine has no GPU 99 (its GPUs: 0-{visible_gpus() - 1})")
    assert lines["0 --executor slurm"] == ("error: --gpus places local workers; it does not go with --executor "
                                           "slurm (ask SLURM for them: --slurm gpus-per-task=N)")
    assert lines["0 --plan-only"].endswith("it does not go with --plan-only (it runs nothing)")
    dry = _cli(store, "run", "--dry-run", "--workers", "2", path)
    assert dry.returncode == 0 and dry.stdout.startswith("sweep many"), dry.stdout + dry.stderr
    assert not store.exists()


def test_each_gpu_worker_sees_its_own_gpu(tmp_path, monkeypatch):
    """`--gpus 0,1 --workers 2`: four worker processes, two seeing GPU 0 and two GPU 1 (read from
    each live worker's environment). This machine may have no GPU: the driver is told it has two,
    the workers (real processes, placed by CUDA_VISIBLE_DEVICES) then train on what they find."""
    import threading
    from collections import Counter

    from click.testing import CliRunner

    import lmcsweep.gpus
    from lmcsweep.cli import main

    monkeypatch.setattr(lmcsweep.gpus, "visible_gpus", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("name: many", "name: gpus"))
    store = tmp_path / "store"
    seen: dict[str, str] = {}
    stop = threading.Event()

    def look() -> None:  # every worker's CUDA_VISIBLE_DEVICES while it lives
        while not stop.wait(0.05):
            try:
                names = [w["name"] for w in Queue(default_uri(store)).workers()]
            except Exception:  # noqa: BLE001 -- the queue is not made yet
                continue
            for name in names:
                if name not in seen:
                    try:
                        env = Path(f"/proc/{name.rsplit(':', 1)[1]}/environ").read_bytes().split(b"\0")
                    except OSError:
                        continue
                    seen[name] = next((e.split(b"=", 1)[1].decode() for e in env
                                       if e.startswith(b"CUDA_VISIBLE_DEVICES=")), "")
    watcher = threading.Thread(target=look, daemon=True)
    watcher.start()
    try:
        out = CliRunner().invoke(main, ["--store", str(store), "run", "--gpus", "0,1", "--workers", "2",
                                        "--no-progress", str(path)])
    finally:
        stop.set()
        watcher.join()
    assert out.exit_code == 0, out.output
    assert re.search(r"^gpus: 14 jobs run, .*\(\d+s, 2 workers per GPU\)$", out.output, re.M), out.output
    assert len(seen) == 4 and Counter(seen.values()) == {"0": 2, "1": 2}, seen


def test_a_queue_that_cannot_be_reached_is_one_line_without_its_password(tmp_path):
    from services import free_port

    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    uri = f"postgresql+psycopg://lab:S3CRET-pw@127.0.0.1:{free_port()}/queue"
    out = _cli(tmp_path / "store", "run", "--workers", "2", "--queue-uri", uri, path)
    assert out.returncode == 2 and not (tmp_path / "store").exists()
    assert out.stderr.splitlines() == [f"error: job queue {uri.replace('S3CRET-pw', '***')} cannot be read: "
                                       f"{out.stderr.split(' cannot be read: ', 1)[1].strip()}"], out.stderr
    assert "Connection refused" in out.stderr and "S3CRET" not in out.stderr


def test_a_worker_given_another_store_is_one_line_and_changes_nothing(reference, tmp_path):
    """A worker whose --store is not the one its sweep was planned into: one line naming the sweep
    and the store, exit 2; no job claimed (the queue's rows as they were), nothing made there."""
    path, _ = reference
    planned = tmp_path / "planned"
    out = _cli(planned, "run", "--plan-only", path)
    assert out.returncode == 0, out.stderr
    queue = Queue(default_uri(planned))
    before = queue.rows("many")
    other = tmp_path / "other"
    out = _cli(other, "worker", "--queue-uri", queue.uri)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == (f"error: the queue holds jobs of sweep 'many' but its plan is not in store "
                                  f"{other} (give the --store its driver used)"), out.stderr
    assert queue.rows("many") == before and not queue.workers()
    assert not other.exists()


def test_a_worker_brings_a_queue_planned_by_an_earlier_version_up_to_date(tmp_path):
    """A queue planned before trial slots and the jobs' timing columns existed: a worker adds what is
    missing and runs every job (a worker with no ready job looks for trials to ask)."""
    import sqlite3

    path = tmp_path / "old.yaml"
    path.write_text(SWEEP.replace("name: many", "name: old").replace("200it", "20it").replace("100it", "10it")
                    .replace("rewind: [0it, 20it]", "rewind: [0it]").replace("replicates: 2", "replicates: 1"))
    store = tmp_path / "store"
    assert _cli(store, "run", "--plan-only", path).returncode == 0
    db = sqlite3.connect(store / "queue.db")
    db.executescript("DROP TABLE trial_slots; DROP TABLE searches; ALTER TABLE jobs DROP COLUMN how; "
                     "ALTER TABLE jobs DROP COLUMN started; ALTER TABLE jobs DROP COLUMN ended;")
    db.close()
    out = _cli(store, "worker")
    assert out.returncode == 0, out.stderr
    queue = Queue(default_uri(store))
    assert queue.counts("old") == {"done": 4}
    assert all(r["how"] == "computed" and r["ended"] for r in queue.rows("old").values())
