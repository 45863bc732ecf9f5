"""The CPU pool executor: the networks of a wave trained side by side on the CPU's cores.

Each network trains on train.cpu_threads kernel threads (default 1) and as many train at once as
the cores allow (`together.at_once`), each worker taking the next task when it is free: forked
worker processes (threads with more than one kernel thread per network, or with the FFCV loader;
`together`). A forked worker writes its checkpoints itself, on its own writer thread; its MLflow
writes and progress go to this process, whose tracker records them in order (`RelayWriter`): a
tracking process of its own per worker would cost each worker an MLflow import (~3 s of CPU;
bench/tracking.py) on a wave that trains for seconds.
"""

from __future__ import annotations

from ...store import Writer
from ...tracking import Tracker
from ..together import send, together
from .base import Task, flush


class RelayWriter(Writer):
    """The writer of a forked worker: store writes on its own thread; calls on the tracker go to the
    process that forked it (`together.send`), in the order they are made."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def submit(self, fn, *args) -> None:
        if getattr(fn, "__self__", None) is self.tracker:
            send(("tracker", fn.__name__, args))
        else:
            super().submit(fn, *args)


class CpuPool:
    """Runs the tasks side by side on the CPU (their contexts train alike: device, compile,
    cpu_threads, loader; the first one's settings are used). A task's result does not depend on
    its group (tests/test_batched.py)."""

    name = "cpu"

    def run(self, tasks: list[Task]) -> dict[str, BaseException]:
        contexts = list({id(t.ctx): t.ctx for t in tasks}.values())
        first = contexts[0]
        try:
            for ctx in contexts:
                ctx.writer.flush()  # nothing half-written when workers fork
        except Exception as exc:  # noqa: BLE001
            return {t.job.hash: exc for t in tasks}

        def in_child() -> None:  # a worker process: its own writer thread; tracking and progress go through us
            writer = RelayWriter(first.tracker)
            for ctx in contexts:
                ctx.writer = writer
                ctx.progress = lambda n: send(("progress", n))
                ctx.report = lambda *event: send(("report", event))

        def on_message(message: tuple) -> None:
            if message[0] == "progress":
                first.progress(message[1])
            elif message[0] == "report":
                first.report(*message[1])
            else:  # ("tracker", method, args)
                first.writer.submit(getattr(first.tracker, message[1]), *message[2])

        def work(task: Task) -> None:
            task()
            if isinstance(task.ctx.writer, RelayWriter):
                task.ctx.writer.flush()  # its checkpoints are on disk before it reports done

        h = first.hyper
        outcomes = together([lambda t=task: work(t) for task in tasks], first.device, threads=h.cpu_threads,
                            processes=first.sweep.data.loader != "ffcv", in_child=in_child, on_message=on_message)
        failed = {t.job.hash: out for t, out in zip(tasks, outcomes) if isinstance(out, BaseException)}
        return flush(tasks, failed)
