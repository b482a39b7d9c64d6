"""A process pool in which every task has a hard wall-clock timeout.

``concurrent.futures.ProcessPoolExecutor`` cannot stop one stuck task: sympy evaluating ``9^{9^{9^{9}}}`` sits in a
C-level big-integer power where neither a signal nor a future's cancel reaches it. Here each worker takes one task
at a time through its own pipe; a task that outlives ``timeout_s`` gets its worker SIGKILLed and replaced, and is
reported as ``timed_out`` (never retried: it would only hang again). A worker that dies (segfault, out of memory,
killed from outside) mid-task never costs the run, nor silently the task: the task is run again in another worker, up
to ``retries_after_death`` more times, and only if every attempt's worker died is it reported as an ``error`` with
``worker_died`` set. A task that raises is reported at once (its exception is its answer).

Workers start from a ``forkserver`` (a clean process that has imported the preload modules once, so a replacement
worker is a cheap fork with sympy already loaded); ``spawn`` where forkserver is unavailable. Neither copies the
parent's threads or locks, so the pool is safe to create and use from any thread of a process that runs torch,
vLLM or data-loader threads. Batches are serialised: two threads calling ``imap`` take turns. If the owning process
is killed, its workers die too, busy or not (``_die_with_forkserver``): no orphan keeps a CPU spinning on sympy.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

WORKER_START_TIMEOUT_S = 120.0
RETRIES_AFTER_DEATH = 2  # a task whose worker died runs again up to this many times, each time in a live worker
_MAX_CONSECUTIVE_START_FAILURES = 3


@dataclass
class TaskResult:
    value: Any = None
    timed_out: bool = False
    error: str | None = None  # "ExcType: message" raised by the task, a timeout, or a dead worker
    seconds: float = 0.0  # of the last attempt
    worker_died: bool = False  # the worker died on every attempt (``error`` says how often and the last exit code)
    attempts: int = 1  # 1 + the retries after worker deaths


def _die_with_forkserver() -> None:
    """Make a forkserver-started worker die when the process that owns the pool dies, even mid-task.

    A worker stuck in sympy never reads its pipe again, so it cannot notice its owner's death (and a watchdog thread
    would starve: big-integer arithmetic holds the GIL). Instead: (1) the kernel SIGKILLs the worker when its parent,
    the forkserver, exits (PR_SET_PDEATHSIG); (2) the worker drops its copy of the forkserver's "alive" pipe, which
    multiprocessing hands every child, so that the forkserver sees EOF, and exits, as soon as the owner dies.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the forkserver died before prctl took effect
        os._exit(1)
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # its private "alive" fd is not in typeshed
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        try:
            os.close(alive_fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None


def _worker_main(conn, warmup: Callable[[], None] | None, memory_limit_mb: int | None, via_forkserver: bool) -> None:
    if via_forkserver:
        _die_with_forkserver()
    # Ctrl-C goes to the whole process group; the parent decides what to do, a worker must not die mid-send.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb:
        import resource

        limit = int(memory_limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if warmup is not None:
        warmup()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if message is None:
            return
        task_id, fn, args = message
        started = time.perf_counter()
        try:
            reply: tuple[Any, Any, str | None] = (task_id, fn(*args), None)
        except Exception as exc:  # reported to the parent as this task's error, with its type
            reply = (task_id, None, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply + (time.perf_counter() - started,))
        except Exception as exc:  # e.g. an unpicklable return value
            conn.send((task_id, None, f"cannot send result: {type(exc).__name__}: {exc}", time.perf_counter() - started))


class _Worker:
    def __init__(self, ctx: Any, warmup: Callable[[], None] | None, memory_limit_mb: int | None) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        via_forkserver = ctx.get_start_method() == "forkserver"
        self.process = ctx.Process(target=_worker_main, args=(child_conn, warmup, memory_limit_mb, via_forkserver),
                                   daemon=True)
        self.process.start()
        child_conn.close()
        self.started_at = time.monotonic()
        self.ready = False
        self.task: tuple[int, float] | None = None  # (task index, monotonic start)
        self.args: tuple | None = None  # the task's arguments, to run it again if this worker dies

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()


def _context(start_method: str | None, preload: list[str]):
    method = start_method or ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    ctx = multiprocessing.get_context(method)
    if method == "forkserver" and preload:
        ctx.set_forkserver_preload(preload)  # ignored if the forkserver is already running: then workers import lazily
    return ctx


class HardTimeoutPool:
    """``imap(fn, args_list)`` yields one ``TaskResult`` per args tuple, in order; ``fn`` must be a module-level function."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        *,
        warmup: Callable[[], None] | None = None,
        preload: list[str] | None = None,
        memory_limit_mb: int | None = None,
        start_method: str | None = None,
        retries_after_death: int = RETRIES_AFTER_DEATH,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries_after_death < 0:
            raise ValueError(f"retries_after_death must be >= 0, got {retries_after_death}")
        self.retries_after_death = int(retries_after_death)
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self._warmup = warmup
        self._memory_limit_mb = memory_limit_mb
        self._ctx = _context(start_method, preload or [])
        self._lock = threading.Lock()
        self._closed = False
        self.num_timeouts = 0
        self.num_worker_deaths = 0  # workers found dead mid-task (retried, or the task's error) or at a dispatch
        self.num_retries = 0
        self.num_failed_tasks = 0  # tasks given up on after their worker died on every attempt
        self._start_failures = 0
        self._attempts: dict[int, int] = {}  # task index -> attempts started, in the current batch
        self._workers = [self._new_worker() for _ in range(num_workers)]

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self._warmup, self._memory_limit_mb)

    def _replace(self, index: int) -> None:
        self._workers[index].kill()
        self._workers[index] = self._new_worker()

    def map(self, fn: Callable, args_list: Iterable[tuple]) -> list[TaskResult]:
        return list(self.imap(fn, args_list))

    def imap(self, fn: Callable, args_list: Iterable[tuple]) -> Iterator[TaskResult]:
        if self._closed:
            raise RuntimeError("the pool is closed")
        tasks = list(args_list)
        with self._lock:
            yield from self._run(fn, tasks)

    def _run(self, fn: Callable, tasks: list[tuple]) -> Iterator[TaskResult]:
        pending = collections.deque(enumerate(tasks))
        results: dict[int, TaskResult] = {}
        next_out = 0
        self._attempts = {}
        try:
            while next_out < len(tasks):
                self._dispatch(fn, pending)
                while next_out in results:
                    yield results.pop(next_out)
                    next_out += 1
                if next_out >= len(tasks):
                    break
                self._collect(results, pending)
                self._enforce_deadlines(results)
        finally:
            # An abandoned generator must not leave tasks running into the next batch.
            for i, worker in enumerate(self._workers):
                if worker.task is not None:
                    self._replace(i)

    def _dispatch(self, fn: Callable, pending: collections.deque) -> None:
        for i, worker in enumerate(self._workers):
            if pending and worker.ready and worker.task is None:
                index, args = pending.popleft()
                try:
                    worker.conn.send((index, fn, args))
                except (BrokenPipeError, OSError):  # died while idle: retry the task on its replacement
                    pending.appendleft((index, args))
                    self.num_worker_deaths += 1
                    self._replace(i)
                    continue
                worker.task = (index, time.monotonic())
                worker.args = args
                self._attempts[index] = self._attempts.get(index, 0) + 1

    def _collect(self, results: dict[int, TaskResult], pending: collections.deque) -> None:
        now = time.monotonic()
        deadlines = [w.task[1] + self.timeout_s for w in self._workers if w.task is not None]
        deadlines += [w.started_at + WORKER_START_TIMEOUT_S for w in self._workers if not w.ready]
        wait_s = max(0.0, min(deadlines) - now) if deadlines else None
        by_conn = {w.conn: i for i, w in enumerate(self._workers)}
        for conn in wait(list(by_conn), timeout=wait_s):
            i = by_conn[conn]
            worker = self._workers[i]
            try:
                message = worker.conn.recv()  # == conn.recv(): wait() returns the connections it was given
            except (EOFError, OSError):
                self._worker_died(i, results, pending)
                continue
            if message[0] == "ready":
                worker.ready = True
                self._start_failures = 0
                continue
            task_id, value, error, seconds = message
            results[task_id] = TaskResult(value=value, error=error, seconds=seconds,
                                          attempts=self._attempts.get(task_id, 1))
            worker.task = None
            worker.args = None

    def _worker_died(self, i: int, results: dict[int, TaskResult], pending: collections.deque) -> None:
        worker = self._workers[i]
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        if worker.task is not None:
            index, started = worker.task
            self.num_worker_deaths += 1
            attempts = self._attempts.get(index, 1)
            if attempts <= self.retries_after_death:
                pending.appendleft((index, worker.args))  # next in line, on the first live worker
                self.num_retries += 1
            else:
                self.num_failed_tasks += 1
                results[index] = TaskResult(
                    error=f"worker died (exit code {code}) on each of {attempts} attempt{'s' * (attempts > 1)}",
                    seconds=time.monotonic() - started, worker_died=True, attempts=attempts)
        elif not worker.ready:
            self._start_failures += 1
            if self._start_failures >= _MAX_CONSECUTIVE_START_FAILURES:
                raise RuntimeError(f"pool workers fail to start (last exit code {code}); see their stderr above")
        self._replace(i)

    def _enforce_deadlines(self, results: dict[int, TaskResult]) -> None:
        now = time.monotonic()
        for i, worker in enumerate(self._workers):
            if worker.task is not None and now - worker.task[1] >= self.timeout_s:
                index, started = worker.task
                results[index] = TaskResult(timed_out=True, error=f"timed out after {self.timeout_s:g} s", seconds=now - started,
                                            attempts=self._attempts.get(index, 1))
                self.num_timeouts += 1
                worker.task = None
                self._replace(i)
            elif not worker.ready and now - worker.started_at > WORKER_START_TIMEOUT_S:
                raise RuntimeError(f"a pool worker did not start within {WORKER_START_TIMEOUT_S:g} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=2)
            worker.kill()

    def __enter__(self) -> HardTimeoutPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the daemon workers die with us anyway
            pass
