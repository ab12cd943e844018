"""The threads a run's event loop hands blocking work to (``asyncio.to_thread``: file writes and their fsyncs)."""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from connectors.logs import LogFunction


class RunExecutor(ThreadPoolExecutor):
    """The default executor of a run's loop, whose end waits a bounded time for its threads.

    ``asyncio.run`` waits without bound for the default executor at the end of a run, and the interpreter again at
    exit: one write stuck in fsync (a disk or network volume not answering) would keep the process past the 20 s an
    orchestrator gives after SIGTERM. Here the end of the run waits ``shutdown_seconds``, says what still runs, and
    leaves it: the threads are daemons, so the process can end without them. A ThreadPoolExecutor only because the
    loop accepts no other kind; its own threads are never started (``submit`` runs jobs on these).
    """

    def __init__(self, name: str, shutdown_seconds: float, log: LogFunction):
        super().__init__(max_workers=1, thread_name_prefix=name)
        self._name = name
        self._shutdown_seconds = shutdown_seconds
        self._log = log
        self._limit = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._idle = 0  # workers waiting for a job that no submit has claimed yet
        self._running: dict[str, str] = {}  # worker name -> what it runs (said if the end leaves it running)
        self._ended = False

    def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[override]
        future: Future = Future()
        with self._guard:
            if self._ended:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
            elif len(self._workers) < self._limit:
                worker = threading.Thread(target=self._work, name=f"{self._name}_{len(self._workers)}", daemon=True)
                self._workers.append(worker)
                worker.start()
        return future

    def _work(self) -> None:
        name = threading.current_thread().name
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            del job
            if future.set_running_or_notify_cancel():
                self._running[name] = _describe(fn)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as error:  # noqa: BLE001 - handed to the awaiting task, as the pool does
                    future.set_exception(error)
                else:
                    future.set_result(result)
                finally:
                    self._running.pop(name, None)
            result = None  # nor its result (a parsed blob) while waiting for the next job
            del future, fn, args, kwargs
            with self._guard:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._guard:
            self._ended = True
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)  # after the queued jobs: they still run, within the bound
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        if not wait:
            return
        deadline = time.monotonic() + self._shutdown_seconds
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stuck = sorted({self._running.get(worker.name, "a queued job") for worker in workers if worker.is_alive()})
        if stuck:
            self._log(f"Still running {self._shutdown_seconds:g}s after the end of the run, left unfinished so the "
                      f"process can end: {', '.join(stuck)} (a disk not answering?)", "error")


def _describe(fn: Callable) -> str:
    """The function a job runs (``asyncio.to_thread`` wraps it in ``partial(context.run, function, ...)``)."""
    while isinstance(fn, functools.partial):
        fn = fn.args[0] if fn.args and getattr(fn.func, "__name__", "") == "run" else fn.func
    return getattr(fn, "__qualname__", None) or repr(fn)
