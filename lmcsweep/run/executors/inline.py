"""The inline executor: one task after another, in this process."""

from __future__ import annotations

from .base import Task, flush


class Inline:
    """Runs each task in this process, in order: a GPU's networks (one at a time: see
    `together`), train.compile, the FFCV loader, prune and interpolation jobs."""

    name = "inline"

    def run(self, tasks: list[Task]) -> dict[str, BaseException]:
        failed: dict[str, BaseException] = {}
        for task in tasks:
            try:
                task()
            except Exception as exc:  # noqa: BLE001 -- one job's failure is its own
                failed[task.job.hash] = exc
        return flush(tasks, failed)
