"""How the jobs the scheduler hands over are run: one interface (`base.Executor`), one file per
way, registered in `EXECUTORS`.

- `inline`: one task after another in this process: a GPU's networks, train.compile, the FFCV
  loader, and every prune and interpolation;
- `cpu`: the networks of a wave side by side on the CPU's cores, in forked worker processes
  (threads with train.cpu_threads > 1).

Adding a way (a pool over GPUs, SLURM) is a new file here with a class that has `run(tasks)`, and
its line in `EXECUTORS` (and in `choose`, if the scheduler should pick it itself); no job body
changes.
"""

from __future__ import annotations

from .base import Executor, Task
from .inline import Inline
from .pool import CpuPool

EXECUTORS: dict[str, type] = {Inline.name: Inline, CpuPool.name: CpuPool}


def choose(task: Task, trains: bool) -> Executor:
    """The executor for a group of tasks like `task`: networks that train (`trains`) side by side
    on a CPU when they may (no train.compile: one compiled network at a time), else inline."""
    ctx = task.ctx
    if trains and ctx.device.type == "cpu" and not ctx.hyper.compile:
        return EXECUTORS["cpu"]()
    return EXECUTORS["inline"]()


__all__ = ["EXECUTORS", "Executor", "Task", "choose"]
