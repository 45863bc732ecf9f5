"""Workers as a SLURM job array, submitted through submitit (the only submitit importer).

Each array task is one `lmcsweep worker` on the sweep's queue. The task is checkpointable: when
SLURM preempts it or its time runs out, submitit requeues it, and the worker, started again,
claims jobs from the queue as any worker does (a job it held resumes from its checkpoint once its
lease expires). A worker needs the store (a shared folder), the MLflow tracking server and the
queue's database to be reachable from the nodes.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import submitit
from pydantic import ValidationError

from .config import SlurmConfig

# sbatch options by their names in a sweep file's `slurm` section (`--slurm` takes them with '-'
# for '_') -> submitit's parameter names
OPTIONS = {"partition": "slurm_partition", "time": "timeout_min", "cpus_per_task": "cpus_per_task",
           "gpus_per_task": "slurm_gpus_per_task", "gpus_per_node": "gpus_per_node", "mem": "slurm_mem",
           "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
           "exclude": "slurm_exclude"}


class SlurmError(RuntimeError):
    """sbatch refused the submission, or a worker task failed to start."""


class Worker(submitit.helpers.Checkpointable):
    """One array task: `lmcsweep worker` in a subprocess; requeued as it is when preempted."""

    def __call__(self, command: list[str]) -> int:
        return subprocess.run(command).returncode


def options(section: SlurmConfig | None, pairs: list[str]) -> SlurmConfig:
    """The sweep file's `slurm` section with the command line's `--slurm KEY=VALUE` over it (an
    `extra=KEY=VALUE` line is added to the file's), checked as the file's are."""
    merged = section.model_dump(exclude_none=True) if section is not None else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SlurmError(f"--slurm {pair!r}: not KEY=VALUE")
        if key == "extra":
            merged["extra"] = [*merged.get("extra", []), value.replace(":", "=", 1) if "=" not in value else value]
        else:
            merged[key] = value
    try:
        return SlurmConfig.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]).replace("_", "-")
        names = ", ".join(k.replace("_", "-") for k in [*OPTIONS, "extra"])
        message = f"unknown option; one of {names}" if err["type"] == "extra_forbidden" else err["msg"]
        raise SlurmError(f"--slurm {field}: {message[0].lower() + message[1:]}") from None


def _executor(folder: Path, tasks: int, slurm: SlurmConfig) -> Any:
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {"slurm_array_parallelism": tasks, "name": "lmcsweep-worker"}
    for key, value in slurm.model_dump(exclude_none=True).items():
        if key == "extra":
            for line in value:
                name, sep, val = line.removeprefix("--").partition("=")
                params.setdefault("slurm_additional_parameters", {})[name.replace("-", "_")] = val if sep else True
        else:
            params[OPTIONS[key]] = value
    executor.update_parameters(**params)
    return executor


def _refused(message: str) -> SlurmError:
    """sbatch's error lines as one ("sbatch: error: " left out)."""
    lines = [line.strip().removeprefix("sbatch: error: ").strip() for line in message.strip().splitlines()]
    return SlurmError(f"sbatch refused the submission: {'; '.join(line for line in lines if line) or 'no reason given'}")


def check(tasks: int, slurm: SlurmConfig) -> None:
    """`sbatch --test-only` on the script `submit` would give sbatch (a bad partition, gres, account
    ...): SlurmError with sbatch's message, before the driver writes anything."""
    with tempfile.TemporaryDirectory(prefix="lmcsweep-sbatch-") as folder:
        script = Path(folder) / "check.sh"
        # (submitit's own script text: the options as `submit` passes them)
        script.write_text(_executor(Path(folder), tasks, slurm)._executor._make_submission_file_text("true", "check"))
        try:
            out = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"sbatch cannot be run here: {exc}") from None
        if out.returncode != 0:
            raise _refused(out.stderr or out.stdout)


def submit(command: list[str], tasks: int, folder: Path, slurm: SlurmConfig) -> list[Any]:
    """Submit `tasks` array tasks each running `command`, with `slurm`'s sbatch options; returns
    submitit's jobs."""
    executor = _executor(folder, tasks, slurm)
    said = io.StringIO()  # (submitit prints sbatch's error lines itself: they go in the one line)
    try:
        with contextlib.redirect_stderr(said):
            return executor.map_array(Worker(), [command] * tasks)
    except subprocess.CalledProcessError as exc:
        message = exc.stderr or exc.output or b""
        raise _refused(message.decode() if isinstance(message, bytes) else message) from None
    except Exception as exc:  # noqa: BLE001 -- submitit's own errors carry sbatch's message
        raise _refused(str(exc) or said.getvalue()) from None


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
