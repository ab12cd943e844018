"""One request to the runtime until it answers: the connection pool, timeouts, retries with backoff, the outage
said once, and the stall watch of each sender's request.

- 2xx: confirmed.
- 408, 425, 429, 5xx, timeouts, connection errors: retried with backoff (``Retry-After`` honoured), forever; one
  warning when the runtime stops answering and one line when it is back, whatever the number of senders.
- A refusal for good (``Refused``) or a configuration answer (``Misdirected``) is raised to the caller.

A connection silent for the read inactivity bound once the request was written is given up (the request goes
again on a new one). That bound starts only once the body is written: a connection frozen while the body is still
being written (its socket buffers full) would wait for ever. So a request unanswered for the stall watch's time is
a stall: ``renew_connections`` gives up the requests in flight (each is sent again) and replaces the pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time

import aiohttp

from connectors import metrics
from connectors.delivery.control import Control, DeliveryAborted
from connectors.logs import OnceLogger
from connectors.progress import StallWatch
from connectors.retry import RetryOn, retrying
from connectors.sinks import Misdirected, Refused, Request, RetryableError, Sink, client_session, post

# A pool dropped by a stall, or closed at the end, is given this long: a connection frozen with bytes still to
# write never closes (its socket waits to flush), and it is left to the process's end rather than waited for.
CLOSE_WAIT = 1.0
UNEXPECTED = "unexpected"  # the outage's key for an unexpected error: counted as an outage, said in its own words
# The sender a coroutine runs for (its stall-watch reading): set at the start of each sender task.
sender_name: contextvars.ContextVar[str] = contextvars.ContextVar("sender", default="sender")


class Transport:
    def __init__(self, sink: Sink, control: Control, *, trigger: str, connections: int,
                 timeout: tuple[float, float], progress: StallWatch | None,
                 session: aiohttp.ClientSession | None = None):
        self.sink = sink
        self.control = control
        self.trigger = trigger
        self._connections = connections
        self._timeout = timeout
        self._usual_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout[0], sock_read=timeout[1])
        self._progress = progress
        self.session = session  # made on first use (on the loop), closed by close()
        self._closing_sessions: set[asyncio.Task[None]] = set()  # pools dropped by a stall, being closed
        self._attempts: set[asyncio.Task[None]] = set()  # requests on the wire
        self._given_up: set[asyncio.Task[None]] = set()  # ... cancelled by a stall: sent again
        self.outage = OnceLogger(control.log)

    @property
    def outage_seconds(self) -> float | None:
        """How long delivery has been failing, the runtime unreachable or an unexpected error (None: it works)."""
        lasting = [seconds for key in ("", UNEXPECTED) if (seconds := self.outage.lasting(key)) is not None]
        return max(lasting, default=None)

    async def send_until_confirmed(self, request: Request) -> None:
        """Confirmed, or raises ``Refused``, ``Misdirected`` or ``DeliveryAborted`` (failed, or stopping with no
        time left)."""
        await retrying(functools.partial(self._send_once, request), RetryOn(RetryableError),
                       backoff=self.control.backoff, pause=self.control.pause, on_failure=self._failed,
                       on_success=self._outage_ended)

    async def _send_once(self, request: Request) -> None:
        self.control.check()
        try:
            await self._post(request)
        except (Refused, Misdirected):
            self._outage_ended()  # the runtime answered
            raise

    def _failed(self, error: BaseException, failures: int) -> None:
        metrics.delivery_retries.labels(self.trigger).inc()
        self.outage.began(f"Delivery to the runtime failed, retrying until it succeeds: {error}")

    def _outage_ended(self) -> None:
        self.outage.ended("Runtime reachable again; delivery resumed")

    async def _post(self, request: Request) -> None:
        """One attempt, watched: the sender's reading is behind while its request is on the wire."""
        watch, reading = self._progress, sender_name.get()
        if watch is not None:
            watch.behind(reading, True)  # from now, unless a given-up attempt left it behind already
        attempt = asyncio.ensure_future(post(self._client(), request, self._attempt_timeout()))
        self._attempts.add(attempt)
        try:
            await attempt
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if attempt in self._given_up and not (current is not None and current.cancelling()):
                raise RetryableError("the runtime did not answer within the stall time: request given up, sent "
                                     "again on a new connection") from None
            raise
        finally:
            self._attempts.discard(attempt)
            given_up = attempt in self._given_up
            self._given_up.discard(attempt)
            # An answer, whatever it says, is progress (an outage is said as such); a request given up by the
            # stall's recovery is not: its reading stays behind, so a runtime that never answers again reaches the
            # watch's last step and liveness.
            if watch is not None and not given_up:
                watch.behind(reading, False)
                watch.progressed(reading)

    def _client(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = client_session(self._connections, self.sink.url)
        return self.session

    def _attempt_timeout(self) -> aiohttp.ClientTimeout:
        """The usual timeouts, or once stopping what is left before the deadline (none left: no attempt)."""
        abort_at = self.control.abort_at
        if abort_at is None:
            return self._usual_timeout
        left = abort_at - time.monotonic()
        if left <= 0:
            raise DeliveryAborted("stop deadline reached")
        return aiohttp.ClientTimeout(total=left, sock_connect=min(self._timeout[0], left),
                                     sock_read=min(self._timeout[1], left))

    def renew_connections(self) -> None:
        """A stall (a request unanswered for the stall time: a connection silent without a word): the requests on
        the wire are given up (each is sent again) and the pool is replaced."""
        for attempt in self._attempts:
            self._given_up.add(attempt)
            attempt.cancel()
        session, self.session = self.session, None
        if session is not None and not session.closed:
            self._closing_sessions.add(task := self.control.loop.create_task(session.close()))
            task.add_done_callback(self._closing_sessions.discard)

    async def close(self) -> None:
        """Closes the pools, waiting at most ``CLOSE_WAIT`` for them (then their connections are left to the
        process's end)."""
        if self.session is not None and not self.session.closed:
            self._closing_sessions.add(self.control.loop.create_task(self.session.close()))
        if self._closing_sessions:
            await asyncio.wait(self._closing_sessions, timeout=CLOSE_WAIT)
