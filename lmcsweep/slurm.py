"""Workers as a SLURM job array, submitted through submitit (the only submitit importer).

Each array task is one `lmcsweep worker` on the sweep's queue. The task is checkpointable: when
SLURM preempts it or its time runs out, submitit requeues it, and the worker, started again,
claims jobs from the queue as any worker does (a job it held resumes from its checkpoint once its
lease expires). A worker needs the store (a shared folder), the MLflow tracking server and the
queue's database to be reachable from the nodes.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import submitit

# sbatch options by their command-line names (`--slurm KEY=VALUE`) -> submitit's parameter names
OPTIONS = {"partition": "slurm_partition", "time": "timeout_min", "cpus-per-task": "cpus_per_task",
           "gpus-per-task": "slurm_gpus_per_task", "gpus-per-node": "gpus_per_node", "mem": "slurm_mem",
           "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
           "exclude": "slurm_exclude"}


class SlurmError(RuntimeError):
    """sbatch refused the submission, or a worker task failed to start."""


class Worker(submitit.helpers.Checkpointable):
    """One array task: `lmcsweep worker` in a subprocess; requeued as it is when preempted."""

    def __call__(self, command: list[str]) -> int:
        return subprocess.run(command).returncode


def submit(command: list[str], tasks: int, folder: Path, options: dict[str, str]) -> list[Any]:
    """Submit `tasks` array tasks each running `command`; returns submitit's jobs."""
    unknown = sorted(set(options) - set(OPTIONS) - {"extra"})
    if unknown:
        raise SlurmError(f"unknown SLURM option(s) {', '.join(unknown)}: use {', '.join(sorted(OPTIONS))} "
                         "or extra=KEY:VALUE")
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {"slurm_array_parallelism": tasks, "name": "lmcsweep-worker"}
    for key, value in options.items():
        if key == "extra":
            name, _, val = value.partition(":")
            params.setdefault("slurm_additional_parameters", {})[name] = val
        else:
            params[OPTIONS[key]] = int(value) if key in ("time", "cpus-per-task") else value
    executor.update_parameters(**params)
    try:
        return executor.map_array(Worker(), [command] * tasks)
    except subprocess.CalledProcessError as exc:
        raise SlurmError(f"sbatch refused the submission: {(exc.stderr or exc.output or b'').decode().strip()}") from None
    except Exception as exc:  # noqa: BLE001 -- submitit's own errors carry sbatch's message
        raise SlurmError(f"sbatch refused the submission: {str(exc).strip().splitlines()[-1]}") from None


def wait(jobs: list[Any], poll: float = 2.0, on_poll: Callable[[], None] | None = None) -> list[str]:
    """Wait for every array task; returns their final states."""
    while not all(job.done() for job in jobs):
        if on_poll is not None:
            on_poll()
        time.sleep(poll)
    return [job.state for job in jobs]


def cancel(jobs: list[Any]) -> None:
    for job in jobs:
        try:
            job.cancel(check=False)
        except Exception:  # noqa: BLE001 -- already gone
            pass
