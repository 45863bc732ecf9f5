"""Copies trained together: the networks of one wave of the job graph (the copies of every
instability analysis, an IMP level's subnetworks and controls; `run.scheduler._waves`) train at
the same time.

On CPU every copy runs its own training loop (the plain network, its own optimizer, data order and
augmentation) in a worker, with its kernels on `train.cpu_threads` intra-op threads (default 1)
and as many workers as the cores allow (`at_once`: cores // cpu_threads), each taking the next
copy when it is free. The workers are forked processes on Linux with one kernel thread each
(threads elsewhere, with more kernel threads, and with the FFCV loader): in threads the copies'
Python contends for the GIL (two LeNet copies measured 1.18x one alone on threads, about 1.05x
in processes; bench/copies.py).

Why not one batched computation: a weight gradient is a sum over the batch, and MKL and oneDNN
split that sum differently for different thread counts and batched shapes, so a copy stacked with
others (or trained on another number of threads) gets other bits than the same copy trained alone.
With a fixed thread count per copy (part of the job's identity, as train.cpu_threads) its numbers
are the same alone, in any group, in any position and on a machine with any number of cores (same
CPU instruction set). Stacking is not faster on CPU either: two LeNet copies stacked on a leading
axis took 2.6x one copy on one core.

On a GPU copies train one after another, each as its plain network (stacked copies measured
1.6-3.8x slower than one copy for ResNet-20 on an H200); with train.compile on, too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from ..children import die_with_parent

T = TypeVar("T")


def cores() -> int:
    """How many copies may train at once on CPU: the intra-op thread count torch would use (it
    follows OMP_NUM_THREADS and the CPU affinity a scheduler such as SLURM gives the process)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    return max(1, min(allowed, torch.get_num_threads()))


def at_once(device: torch.device, threads: int = 1, concurrent: bool = True) -> int:
    """How many networks `together` trains side by side: on CPU, cores // threads (one kernel
    thread set per network); on a GPU, or not `concurrent` (train.compile), one."""
    if device.type != "cpu" or not concurrent:
        return 1
    return max(1, cores() // threads)


@contextlib.contextmanager
def kernel_threads(threads: int, device: torch.device = torch.device("cpu"),
                   deterministic: bool = True) -> Iterator[None]:
    """While inside, torch kernels on CPU run on `threads` intra-op threads; on a GPU, with
    `deterministic` (train.deterministic), only deterministic kernels run (no cuDNN autotuning,
    `torch.use_deterministic_algorithms`), so a job's numbers repeat run to run and do not depend
    on what trains beside it. Settings are restored on exit."""
    if device.type != "cpu":
        before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                  torch.backends.cudnn.benchmark)
        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]
        return
    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)


def together(tasks: Sequence[Callable[[], T]], device: torch.device = torch.device("cpu"),
             concurrent: bool = True, workers: int | None = None, threads: int = 1, processes: bool = True,
             in_child: Callable[[], None] | None = None,
             on_message: Callable[[Any], None] | None = None) -> list[T | BaseException]:
    """Run each task (one copy's whole training) and return its result or the exception it raised,
    in order. On CPU every kernel runs on `threads` threads (train.cpu_threads) and the tasks spread
    over `workers` (default: cores // threads): forked worker processes where the platform forks
    (`processes`) and threads is 1, else threads (GNU OpenMP's thread pool does not survive a
    fork: a forked child running multi-threaded kernels hangs). On a GPU or with `concurrent` off
    they run one after another in this thread (on CPU still on `threads` kernel threads, so a
    copy's numbers never depend on how it was run).

    In a worker process `in_child()` runs first (to swap what must not be shared across a fork:
    database connections, writer threads); the tasks' results and exceptions come back pickled,
    and anything a task passes to `send` reaches `on_message` here, in order, while they run.
    """
    global _handler
    previous, _handler = _handler, on_message
    try:
        if device.type != "cpu":
            return [_guarded(t) for t in tasks]
        n = max(1, min(len(tasks), workers or at_once(device, threads)))
        with kernel_threads(threads):
            if not concurrent or n == 1:
                return [_guarded(t) for t in tasks]
            if processes and threads == 1 and _can_fork():
                return _in_processes(tasks, n, in_child, on_message)
            with ThreadPoolExecutor(n, thread_name_prefix="lmcsweep-copy") as pool:
                return list(pool.map(_guarded, tasks))
    finally:
        _handler = previous


def send(message: Any) -> None:
    """From a task: pass `message` to the caller's `on_message` (directly, unless in a worker process)."""
    _outbox(message)


def _direct(message: Any) -> None:
    handler = _handler
    if handler is not None:
        handler(message)


_handler: Callable[[Any], None] | None = None
_outbox: Callable[[Any], None] = _direct


def _guarded(task: Callable[[], T]) -> T | BaseException:
    try:
        return task()
    except Exception as exc:  # noqa: BLE001 -- one copy's failure is its own
        return exc


def _can_fork() -> bool:
    """Linux only: fork keeps the data and models in shared pages and the tasks need no pickling;
    the workers die with this process (PR_SET_PDEATHSIG), so a killed run leaves none behind."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _in_processes(tasks: Sequence[Callable[[], T]], n: int, in_child, on_message) -> list[T | BaseException]:
    import multiprocessing.connection as mpc
    import pickle
    import signal
    import traceback

    results: list[Any] = [_NOT_RUN] * len(tasks)
    readers: dict[Any, int] = {}
    pids: list[int] = []
    working: dict[int, int] = {}  # worker -> the task it took last
    parent_pid = os.getpid()
    taken = _Counter()  # workers take the next task when free: long and short copies balance out
    for w in range(n):
        reader, writer = mpc.Pipe(duplex=False)
        with warnings.catch_warnings():  # a torch process always has threads; its workers use none
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the worker: its share of the tasks, then exit without running any cleanup
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops (kills) us
                reader.close()
                die_with_parent(parent_pid)
                global _outbox
                # plain pickle, by value (torch's reducers would share tensors through fds that die with us)
                put = lambda obj: writer.send_bytes(pickle.dumps(obj))  # noqa: E731
                _outbox = lambda message: put(("message", message))  # noqa: E731
                if in_child is not None:
                    in_child()
                while (i := taken.next()) < len(tasks):
                    put(("start", i))
                    out = _guarded(tasks[i])
                    if isinstance(out, BaseException):
                        text = "".join(traceback.format_exception(out))
                        try:
                            pickle.dumps(out)
                        except Exception:  # noqa: BLE001 -- send what can be sent
                            out = RuntimeError(f"{type(out).__name__}: {out}")
                        out.add_note(f"in copy worker process {os.getpid()}:\n{text}")
                    put(("done", i, out))
            except KeyboardInterrupt:  # (a signal before the line above): the parent says so
                code = 130
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        writer.close()
        readers[reader] = w
        pids.append(pid)
    try:
        while readers:
            for reader in mpc.wait(list(readers)):
                try:
                    kind, *rest = pickle.loads(reader.recv_bytes())
                except EOFError:
                    del readers[reader]
                    continue
                if kind == "message":
                    if on_message is not None:
                        on_message(rest[0])
                elif kind == "start":
                    working[readers[reader]] = rest[0]
                else:
                    results[rest[0]] = rest[1]
    except BaseException:  # we stop reading (an error here, Ctrl-C): the workers must not wait on us
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    finally:
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    died = {i: statuses[w] for w, i in working.items() if results[i] is _NOT_RUN}
    for i, r in enumerate(results):
        if r is _NOT_RUN:
            why = (f"the copy worker process running it died (wait status {died[i]})" if i in died
                   else "every copy worker process died before it started")
            results[i] = RuntimeError(why)
    return results


_NOT_RUN = object()


class _Counter:
    """The index of the next task, shared by forked workers (a lock-guarded integer in shared memory)."""

    def __init__(self) -> None:
        import multiprocessing

        self._value = multiprocessing.get_context("fork").Value("q", 0)

    def next(self) -> int:
        with self._value.get_lock():
            i = self._value.value
            self._value.value = i + 1
        return i
