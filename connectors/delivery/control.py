"""What every role of delivery shares: whether it failed or is stopping, and the waits that end on either.

Everything runs on the trigger's one event loop, so this state needs no lock; only ``stopping`` may be called
from elsewhere (a signal handler, another thread): it sets the deadline and wakes the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from connectors.errors import ConfigurationError
from connectors.logs import LogFunction, OnceLogger
from connectors.retry import Backoff, RetryOn, retrying
from connectors.stopping import Stopping, unless_stopping

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds a stopping trigger gives delivery, counted from the stop request: with the rest of the stop path the
# process ends well within the 20 s an orchestrator waits, whatever the runtime does.
STOP_GRACE_SECONDS = 8.0


class DeliveryAborted(Exception):
    """Stopping with a batch the runtime never confirmed: its acknowledgements are not called."""


def log_to_logger(message: str, level: str) -> None:
    logger.log(logging.getLevelName(level.upper()), message)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Control:
    """The run's delivery state: its failure (nothing more is sent or acknowledged), its stop deadline, and
    "something changed" for the tasks that wait on it (a cut, a batch taken or acknowledged, a failure, a stop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: LogFunction, backoff: Callable[[], Backoff],
                 on_fatal: Callable[[ConfigurationError], None] | None):
        self.loop = loop
        self.log = log
        self.backoff = backoff
        self._on_fatal = on_fatal
        self.failure: str | None = None
        self.fatal_error: ConfigurationError | None = None
        self.closed = False
        self.abort_at: float | None = None  # once stopping: no attempt starts or waits past this moment
        self._stop_requested = asyncio.Event()  # set on the loop by ``stopping``, from any thread
        self._waiters: set[asyncio.Future[None]] = set()
        self._local_trouble = OnceLogger(log)  # a local write failing (full disk): said once, retried

    # -- stopping and failing --------------------------------------------------------------------------------

    def stopping(self, grace: float) -> None:
        """Delivery gets ``grace`` seconds from now. Safe from a signal handler or another thread: it sets the
        deadline and wakes the loop (a sender sleeping between attempts makes one more attempt, producers waiting
        for room go on)."""
        deadline = time.monotonic() + grace
        if self.abort_at is None or deadline < self.abort_at:
            self.abort_at = deadline
        try:
            self.loop.call_soon_threadsafe(self._stopping_began)
        except RuntimeError:
            pass  # the loop already ended

    def _stopping_began(self) -> None:
        self._stop_requested.set()
        self.notify()

    def fail(self, error: ConfigurationError) -> None:
        """A configuration error: nothing more is sent or acknowledged; the trigger is told once, to stop."""
        first = self.fatal_error is None
        if first:
            self.fatal_error = error
            self.failure = str(error)
        self.notify()
        if first:
            if self._on_fatal is not None:
                self._on_fatal(error)
            else:
                self.log(str(error), "critical")

    def check(self) -> None:
        """Raises DeliveryAborted once delivery failed: no attempt starts."""
        if self.failure is not None:
            raise DeliveryAborted(self.failure)

    # -- waits -----------------------------------------------------------------------------------------------

    async def wait_change(self, timeout: float | None = None) -> None:
        """Until something changed (or ``timeout``): the caller checks its own condition again."""
        waiter = self.loop.create_future()
        self._waiters.add(waiter)
        timer = self.loop.call_later(timeout, _settle, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            _settle(waiter)

    async def pause(self, delay: float) -> None:
        """A backoff sleep, cut short when a stop begins (one more attempt within the grace) or delivery fails;
        raises DeliveryAborted when stopping leaves no time for it."""
        stop_at = self.abort_at
        if stop_at is not None and time.monotonic() + delay > stop_at:
            raise DeliveryAborted("the stop deadline comes before the next attempt")
        sleep = self._sleep_unless_failed(time.monotonic() + delay)
        if stop_at is not None:  # stopping already: the whole sleep fits before the deadline
            await sleep
            return
        try:
            await unless_stopping(sleep, self._stop_requested)
        except Stopping:
            pass

    async def _sleep_unless_failed(self, end: float) -> None:
        while self.failure is None and (left := end - time.monotonic()) > 0:
            await self.wait_change(left)

    async def locally(self, write: Callable[[], Awaitable[T]]) -> T:
        """A local write (records file, set-aside file), retried with backoff while it fails (a full disk)."""

        async def attempt() -> T:
            self.check()
            return await write()

        return await retrying(attempt, RetryOn(OSError), backoff=self.backoff, pause=self.pause,
                              on_failure=self._write_failed, on_success=self._writes_work)

    def _write_failed(self, error: BaseException, failures: int) -> None:
        self._local_trouble.began(f"Delivery cannot write to the local disk ({error}): retrying until it can; "
                                  "nothing more is marked as read meanwhile", "error")

    def _writes_work(self) -> None:
        self._local_trouble.ended("Local writes work again; delivery resumed")
