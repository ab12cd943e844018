"""Delivery to the Sekoia runtime: batching, two ways out, answers classified, acknowledgements after confirmation.

A trigger hands serialized events to a ``Forwarder`` together with an acknowledgement callback (save a
checkpoint, record a blob as done). Everything runs on the trigger's one event loop: ``await add(...)`` buffers
(and is the backpressure), batches are cut on count, bytes or age, and sender tasks send each through a ``Sink``
(``connectors.sinks``: the intake ``/batch`` API over aiohttp, or a playbook event pointing at a records file)
until the runtime confirms it. Only then are the batch's acknowledgements called, on the loop, in the order they
were added, so nothing is ever marked as read before it was delivered. File writes go through
``asyncio.to_thread``.

The runtime's answers, for both sinks:

- 2xx: confirmed.
- 408, 425, 429, 5xx, timeouts, connection errors: retried with backoff (``Retry-After`` honoured), forever.
- 401, 403, 404, 405 and redirects: the configuration is wrong (intake key, intake server, playbook token).
  Nothing more is sent or acknowledged; ``on_fatal`` gets a ``ConfigurationError`` naming the field.
- Any other 4xx (400, 413, 422...): the runtime refuses the request for good. It is split in halves, each sent
  again, until the refused events are alone; a lone event refused with 413 is sent once more shortened to half its
  size. The events still refused are set aside: kept in a local file (one write per request), counted, logged in
  one line per request with where they came from; the rest goes on, and the resume point never waits on one
  event. Two limits: a refused event that cannot be kept (the file at its cap, or none configured) is never
  acknowledged past (the batch is unconfirmed and the trigger stops as on a configuration error); many requests
  refused in a row with none confirmed in between mean the runtime refuses everything (``intake_server`` points at
  something else): a configuration error, instead of one request per event.

An event over the intake's 250,000-byte limit is sent shortened (``connectors.truncation``) and kept whole in
the same local file. A local write that fails (the records file of the playbook sink, the set-aside file: a full
disk) is retried with backoff like an outage, said once; nothing after it is acknowledged meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
from sekoia_automation.constants import EVENT_BYTES_MAX_SIZE

from connectors import metrics
from connectors.errors import ConfigurationError
from connectors.logs import OnceLogger
from connectors.retry import Backoff
from connectors.progress import StallWatch
from connectors.setaside import Kept, SetAsideStore
from connectors.state import thread_to_its_end
from connectors.stopping import Stopping, unless_stopping
from connectors.sinks import Misdirected, Refused, Request, RetryableError, Sink, clean_up, client_session, post
from connectors.truncation import digest, shorten

logger = logging.getLogger(__name__)

Ack = Callable[[], None]  # runs on the loop and must not block (record a position; files via asyncio.to_thread)
T = TypeVar("T")
LogFunction = Callable[[str, str], None]  # (message, level)

# Seconds a stopping trigger gives delivery, counted from the stop request: with the rest of the stop path the
# process ends well within the 20 s an orchestrator waits, whatever the runtime does.
STOP_GRACE_SECONDS = 8.0

# Requests refused in a row, none confirmed in between, whatever their size: the runtime refuses everything (a proxy
# answering 400), not a run of bad records. Splitting a batch around k neighbouring bad records costs about
# 14 + 2k refusals in a row (an envelope of bad records is such a run): stopping on those would stall the trigger
# on its data at every restart, so the bar is high; refusing everything costs this many requests, not one per event.
REFUSES_EVERYTHING_REQUESTS = 100
ORIGINS_NAMED = 3  # origins named in a line about several events
UNEXPECTED = "unexpected"  # the outage's key for an unexpected error: counted as an outage, said in its own words
# The sender a coroutine runs for (its stall-watch reading): set at the start of each sender task.
_sender_name: contextvars.ContextVar[str] = contextvars.ContextVar("sender", default="sender")


@dataclass(frozen=True)
class BatchLimits:
    max_events: int = 10_000
    # Of raw events; escaping inside `jsons` can add a third. Each batch is held several times over (buffered,
    # queued, encoded, on the wire): 1 MB keeps a busy trigger's memory near 150 MB at the same throughput as 4 MB.
    max_bytes: int = 1_000_000
    max_age: float = 1.0  # seconds the oldest buffered event may wait
    in_flight: int = 2  # batches queued behind those being delivered: backpressure on the trigger
    senders: int = 2  # batches sent at once: the runtime handles one while the next is on the wire


class DeliveryAborted(Exception):
    """Stopping with a batch the runtime never confirmed: its acknowledgements are not called."""


class DeliveryBroken(ConfigurationError):
    """A sender task or the age timer ended on an unexpected error (a bug): delivery would stall silently behind
    the heartbeats, so the trigger is told to stop (a restart starts delivery afresh from the last checkpoints)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.field = "delivery"
        self.expected = message


class UnkeptRefusal(ConfigurationError):
    """Events the runtime refused could not be kept locally: acknowledging past them would lose them, so the
    trigger stops (like a configuration error: exit code 2) until someone makes room."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.field = "set-aside file"
        self.expected = message


def _count(kept: list[Kept]) -> str:
    return "an event" if len(kept) == 1 else f"{len(kept)} events"


def _origins(kept: list[Kept]) -> str:
    """The first few distinct origins, and how many more."""
    names = list(dict.fromkeys(entry.origin or "unknown origin" for entry in kept))
    more = len(names) - ORIGINS_NAMED
    return ", ".join(names[:ORIGINS_NAMED]) + (f" and {more} more" if more > 0 else "")


@dataclass
class _Batch:
    events: list[bytes] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # where each event came from (one shared string per add)
    acks: list[Ack] = field(default_factory=list)
    size: int = 0
    started: float = 0.0
    seq: int = 0

    def __bool__(self) -> bool:
        return bool(self.events or self.acks)


class Forwarder:
    """Buffers events, delivers them in batches from sender tasks on the trigger's event loop, and acknowledges
    after the runtime confirmed.

    Batches are numbered in the order they were cut. Several may be on the wire at once, but their
    acknowledgements run on the loop strictly in that order, each only once every batch before it was confirmed:
    an acknowledgement never runs before every event added ahead of it was delivered. After a batch that was never
    confirmed (stopping, a configuration error), nothing more is sent and no later acknowledgement runs.

    Everything runs on the one loop the forwarder was made on (construct it inside the trigger's ``run_async``),
    so its state needs no lock; only ``stopping`` may be called from elsewhere (a signal handler, another thread),
    and it only sets a deadline that the waits poll.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        trigger: str,
        limits: BatchLimits = BatchLimits(),
        log: LogFunction | None = None,
        set_aside: SetAsideStore | None = None,
        session: aiohttp.ClientSession | None = None,  # made on first use (on the loop), closed by close()
        # Connect, and read inactivity: a connection silent for a minute (a NAT or firewall that dropped it
        # without a word) is given up and the request sent again on a new one. Stopping bounds attempts by its
        # deadline instead.
        timeout: tuple[float, float] = (10.0, 60.0),
        backoff: Callable[[], Backoff] = lambda: Backoff(base=0.5, cap=30.0),
        on_delivered: Callable[[int], None] | None = None,
        on_fatal: Callable[[ConfigurationError], None] | None = None,
        # No add for this long, the end of a burst: the buffer goes now rather than at its max age (0: off).
        idle_flush: float = 0.0,
        # Told when each sender's request starts and ends (a reading per sender, behind while one is on the wire):
        # a request unanswered for its stall time is a stall, recovered by ``renew_connections``.
        progress: StallWatch | None = None,
    ):
        try:
            self._loop = asyncio.get_running_loop()  # the senders are its tasks
        except RuntimeError:
            raise RuntimeError("a Forwarder is made on the trigger's event loop (inside run_async)") from None
        self.sink = sink
        self.trigger = trigger
        self.limits = limits
        self._log = log or (lambda message, level: logger.log(logging.getLevelName(level.upper()), message))
        self._set_aside_store = set_aside
        self._keeping = asyncio.Lock()  # one set-aside write at a time (producers and senders both keep events)
        self._session = session
        self._closing_sessions: set[asyncio.Task[None]] = set()  # pools dropped by a stall, being closed
        self._timeout = timeout
        self._usual_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout[0], sock_read=timeout[1])
        self._backoff = backoff
        self._on_delivered = on_delivered
        self._on_fatal = on_fatal
        self._batch = _Batch()
        self._age_timer: asyncio.TimerHandle | None = None  # cuts the buffer once its oldest event is max_age old
        self._idle_flush = idle_flush
        self._idle_timer: asyncio.TimerHandle | None = None  # cuts the buffer once no add came for idle_flush
        self._last_add = 0.0
        self._ready: deque[_Batch] = deque()
        self._idle = 0  # senders waiting for a batch
        self._waiters: set[asyncio.Future[None]] = set()  # tasks waiting for the state to change
        self._cut_count = 0  # batches cut so far: the next batch's number
        self._acked_count = 0  # batches whose acknowledgements ran (or were dropped): all below this number
        self._finished: dict[int, tuple[_Batch, bool]] = {}  # sent batches waiting for their turn to be acked
        self._closed = False
        self._closing: asyncio.Task[bool] | None = None
        self._abort_at: float | None = None  # once stopping: no attempt starts or waits past this moment
        self._outage = OnceLogger(self._log)
        self._local_trouble = OnceLogger(self._log)  # a local write failing (full disk): said once, retried
        self._progress = progress
        self._stop_requested = asyncio.Event()  # set on the loop by ``stopping``, from any thread
        self._failure: str | None = None
        self._abort_told = False
        self.fatal_error: ConfigurationError | None = None
        self.delivered = 0
        self.shortened = 0
        self.refused = 0
        self._refused_in_a_row = 0  # requests the runtime refused since it last confirmed one, across senders
        self._senders = [self._loop.create_task(self._sender(f"sender {n}"), name=f"deliver-{trigger}-{n}")
                         for n in range(max(1, limits.senders))]
        for task in self._senders:
            task.add_done_callback(self._sender_ended)

    # -- producer side -------------------------------------------------------------------------------------

    async def add(self, events: Iterable[bytes], ack: Ack | None = None, origin: str = "") -> int:
        """Buffer serialized events (one JSON document each); ``ack`` runs on the loop once all of them, and all
        added before them, were confirmed. Awaiting it is the backpressure: it returns once at most
        ``limits.in_flight`` cut batches (at least one) wait for a sender, whatever the number of producers (at
        once when stopping). Returns how many were taken:
        0 once a batch was not confirmed (nothing after it could be acknowledged) or once closed (no sender left)."""
        if self._failure is not None or self._closed:
            return 0
        events = await self._fit(events, origin)
        if self._failure is not None or self._closed:
            return 0
        max_events, max_bytes = self.limits.max_events, self.limits.max_bytes
        added, count = 0, len(events)
        while added < count:  # whole slices at a time: the per-event work is the byte count alone
            if not self._batch:
                # Room is waited for before a batch starts, not after it is cut: from the room seen to the cut
                # nothing awaits, so however many producers share the forwarder (one per partition), at most
                # ``in_flight`` cut batches wait, plus the one buffer.
                await self._wait_for_room()
                if self._failure is not None or self._closed:
                    return added
            batch = self._current()
            chunk = events[added : added + max_events - len(batch.events)]
            size = sum(map(len, chunk))
            if batch.size + size >= max_bytes:  # the byte limit falls inside: up to the event that reaches it
                total = batch.size
                for taken, event in enumerate(chunk, 1):
                    total += len(event)
                    if total >= max_bytes:
                        break
                chunk, size = chunk[:taken], total - batch.size
            batch.events.extend(chunk)
            batch.origins.extend([origin] * len(chunk))
            batch.size += size
            added += len(chunk)
            if len(batch.events) >= max_events or batch.size >= max_bytes:
                self._cut()
        if ack is not None:
            if self._batch or not self._ready:
                self._current().acks.append(ack)
            else:  # the unit ended exactly on a batch boundary: ride with its last events
                self._ready[-1].acks.append(ack)
        if self._idle_flush:
            # One timer for a whole burst, not one per add: it looks at the last add when it fires.
            self._last_add = self._loop.time()
            if self._idle_timer is None:
                self._idle_timer = self._loop.call_later(self._idle_flush, self._quiet)
        return added

    async def _wait_for_room(self) -> None:
        """Backpressure: the producer waits while ``in_flight`` cut batches (at least one) wait for a sender,
        unless stopping, failed or closed."""
        room = max(1, self.limits.in_flight)
        while (len(self._ready) >= room and self._abort_at is None and self._failure is None
               and not self._closed):
            await self._wait_change()

    def flush(self) -> None:
        """Queue the current buffer for delivery now (acknowledgements alone are queued too)."""
        self._cut()

    async def drain(self, timeout: float | None = None) -> bool:
        """Flush and wait until every queued batch was confirmed (or aborted). True when all were confirmed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._cut()
        while self._acked_count < self._cut_count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await self._wait_change(remaining)
        return self._failure is None

    def stopping(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """The trigger was asked to stop: delivery gets ``grace`` seconds from now, producers stop waiting for room.

        Safe from a signal handler or another thread: it sets the deadline and wakes the loop (a sender sleeping
        between attempts makes one more attempt, producers waiting for room go on).
        """
        deadline = time.monotonic() + grace
        if self._abort_at is None or deadline < self._abort_at:
            self._abort_at = deadline
        try:
            self._loop.call_soon_threadsafe(self._stopping_began)
        except RuntimeError:
            pass  # the loop already ended

    def _stopping_began(self) -> None:
        self._stop_requested.set()
        self._notify()

    async def close(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        """Deliver what is buffered until the stop deadline (``grace`` from now, or sooner if ``stopping`` set
        one), then cancel the senders, even one in the middle of an HTTP call, and close the session: returns by
        that deadline whatever the runtime does. True when every batch was confirmed; batches not confirmed by
        then are never acknowledged. Idempotent: a second call waits for the first's result."""
        if self._closing is None:
            self._closing = self._loop.create_task(self._close(grace))
        return await asyncio.shield(self._closing)

    async def _close(self, grace: float) -> bool:
        self.stopping(grace)
        deadline = self._abort_at or time.monotonic()
        # Producers released by the stop may still add (what they held while waiting for room, with its ack) after
        # a drain cut the buffer: cut and drain again until nothing is left, or the deadline passed.
        while True:
            confirmed = await self.drain(timeout=max(0.0, deadline - time.monotonic()))
            if not confirmed or not self._batch:
                break
        # From the check above to here nothing awaits: no producer adds in between.
        confirmed = confirmed and not self._batch
        self._closed = True
        self._batch = _Batch()  # left over at the deadline: never sent, its acks never run
        if self._acked_count < self._cut_count:
            self._failure = self._failure or "stopped before the runtime confirmed every batch"
            self._aborted()
        self._drop_age_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._notify()
        for task in self._senders:
            task.cancel()  # one stuck in an HTTP call included: its batch is not acknowledged
        await asyncio.gather(*self._senders, return_exceptions=True)
        # What the senders never finished is dropped: nothing is left to wait for.
        self._ready.clear()
        self._finished.clear()
        self._acked_count = self._cut_count
        metrics.pending_batches.labels(self.trigger).set(0)
        if self._session is not None:
            await self._session.close()
        await asyncio.gather(*self._closing_sessions, return_exceptions=True)
        return confirmed

    @property
    def pending(self) -> int:
        """Batches cut and not yet acknowledged."""
        return self._cut_count - self._acked_count

    @property
    def set_aside(self) -> SetAsideStore | None:
        """Where the full events that were shortened or refused are kept."""
        return self._set_aside_store

    @property
    def outage_seconds(self) -> float | None:
        """How long delivery has been failing, the runtime unreachable or an unexpected error (None: it works)."""
        lasting = [seconds for key in ("", UNEXPECTED) if (seconds := self._outage.lasting(key)) is not None]
        return max(lasting, default=None)

    def renew_connections(self) -> None:
        """A stall (a request unanswered for the stall time: a connection silent without a word): the pool is
        closed, failing the requests on it (each is sent again, on a new connection of a new pool)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            self._closing_sessions.add(task := self._loop.create_task(session.close()))
            task.add_done_callback(self._closing_sessions.discard)

    def _current(self) -> _Batch:
        """The batch to add to (call only to add to it): an empty one starts its age clock."""
        batch = self._batch
        if not batch:
            batch.started = time.monotonic()
            self._drop_age_timer()
            self._age_timer = self._loop.call_later(self.limits.max_age, self._aged)
        return batch

    def _aged(self) -> None:
        """The oldest buffered event is ``max_age`` old: cut now if a sender waits; else the first sender to free
        up cuts it (``_next_batch``), so a busy runtime gets full batches rather than more, smaller ones."""
        self._age_timer = None
        try:
            if self._idle:
                self._cut()
        except Exception as error:  # noqa: BLE001 - a timer's error would only reach the loop's handler
            self._broken("the batch age timer", error)

    def _quiet(self) -> None:
        """``idle_flush`` after an add: cut if no add came since (acknowledgements alone too: a source that went
        quiet gets its positions saved), else wait for the rest of the quiet time."""
        self._idle_timer = None
        try:
            quiet_for = self._loop.time() - self._last_add
            if quiet_for >= self._idle_flush:
                self._cut()
            elif not self._closed:
                self._idle_timer = self._loop.call_later(self._idle_flush - quiet_for, self._quiet)
        except Exception as error:  # noqa: BLE001 - a timer's error would only reach the loop's handler
            self._broken("the idle flush timer", error)

    def _drop_age_timer(self) -> None:
        if self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None

    def _cut(self) -> None:
        """Queue the current batch (not once closed: no sender would take it)."""
        self._drop_age_timer()
        if self._batch and not self._closed:
            self._batch.seq = self._cut_count
            self._cut_count += 1
            self._ready.append(self._batch)
            self._batch = _Batch()
            metrics.pending_batches.labels(self.trigger).set(self.pending)
            self._notify()

    # Waiting on the loop: a task waits for "something changed" (a cut, a batch taken or acknowledged, a failure)
    # with an optional timeout, and re-checks its own condition.

    async def _wait_change(self, timeout: float | None = None) -> None:
        waiter = self._loop.create_future()
        self._waiters.add(waiter)
        timer = self._loop.call_later(timeout, _settle, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            _settle(waiter)

    # -- events the intake cannot take as they are -----------------------------------------------------------

    async def _fit(self, events: Iterable[bytes], origin: str) -> Sequence[bytes]:
        """``events`` with those over the intake's limit shortened (off the loop); their originals kept (one write
        per call). The caller's list is never changed."""
        if not isinstance(events, (list, tuple)):
            events = list(events)
        if not events or max(map(len, events)) <= EVENT_BYTES_MAX_SIZE:
            return events
        oversize = [index for index, event in enumerate(events) if len(event) > EVENT_BYTES_MAX_SIZE]
        events = list(events)
        shortened = await asyncio.to_thread(
            lambda: [shorten(events[index], EVENT_BYTES_MAX_SIZE) for index in oversize])
        originals, lines = [], []
        for index, short in zip(oversize, shortened):
            event = events[index]
            events[index] = short.event
            originals.append(Kept(event, origin, "oversize", sent=True))
            cut = ", ".join(short.fields[:5]) + (f" and {len(short.fields) - 5} more" if len(short.fields) > 5 else "")
            lines.append(
                f"Event of {len(event)} bytes from {origin or 'unknown origin'} is over the intake limit of "
                f"{EVENT_BYTES_MAX_SIZE} bytes: sent shortened to {len(short.event)} bytes "
                f"({f'cut: {cut}' if cut else 'text cut'}, marked `sekoia_truncated`); the full event (sha256 "
                f"{short.sha256}) is ")
        where = await self._keep_originals(originals)
        self.shortened += len(oversize)
        metrics.oversize_events.labels(self.trigger).inc(len(oversize))
        for line in lines:
            self._log(line + where, "warning")
        return events

    async def _keep(self, kept: list[Kept]) -> None:
        """Write events to their set-aside file, off the loop, one write at a time (OSError: the disk refused)."""
        store = self._set_aside_store
        if store is None or not kept:
            return
        async with self._keeping:
            # Held until the thread returns, even for a cancelled caller: the store allows one writer at a time.
            await thread_to_its_end(store.keep, kept)

    async def _keep_originals(self, originals: list[Kept]) -> str:
        """Keep the originals of events sent shortened: a copy, so a write the disk refuses is said, not retried
        (the shortened events still go). Where they are, for the log line."""
        if self._set_aside_store is None:
            return "not kept (no set-aside file)"
        try:
            await self._keep(originals)
        except OSError as error:
            return f"not kept (the originals file cannot be written: {error})"
        return f"kept in {self._set_aside_store.where(sent=True)}"

    async def _set_aside(self, kept: list[Kept]) -> int:
        """Keep the events of one request the runtime would not take as they were (one write, one line per kind);
        returns how many were not sent. Refused events are kept while the disk has room (a write it refuses is
        retried, nothing past them acknowledged meanwhile); without a set-aside file they stop everything (raises
        DeliveryAborted)."""
        if not kept:
            return 0
        refused = [entry for entry in kept if not entry.sent]
        shortened = [entry for entry in kept if entry.sent]
        store = self._set_aside_store
        if refused and store is None:
            self._fail(UnkeptRefusal(
                f"The runtime refused {_count(refused)} ({refused[0].reason}) from {_origins(refused)}, and they "
                "cannot be kept: no set-aside file. They were not marked as read and delivery stopped. Look at why "
                "the runtime refuses them, then restart: they will be collected again"))
            raise DeliveryAborted("refused events cannot be kept")
        await self._locally(lambda: self._keep(refused))
        if shortened:
            where = await self._keep_originals(shortened)
            self.shortened += len(shortened)
            metrics.oversize_events.labels(self.trigger).inc(len(shortened))
            self._log(f"The runtime refused {_count(shortened)} as too large (HTTP 413) from "
                      f"{_origins(shortened)}: sent shortened to half their size (marked `sekoia_truncated`); the "
                      f"full events are {where}", "warning")
        if refused:
            self.refused += len(refused)
            metrics.refused_events.labels(self.trigger).inc(len(refused))
            hashes = ", ".join(digest(entry.event) for entry in refused[:ORIGINS_NAMED])
            self._log(f"The runtime refused {_count(refused)} ({refused[0].reason.removeprefix('refused: ')}) from "
                      f"{_origins(refused)}: not sent, kept in {store.path} (sha256 {hashes}"  # type: ignore[union-attr]
                      f"{', ...' if len(refused) > ORIGINS_NAMED else ''}); delivery goes on", "warning")
        return len(refused)

    # -- sender tasks --------------------------------------------------------------------------------------

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        """A sender ends only once closed (returned, or cancelled by close); any other end is a bug."""
        if task.cancelled() or self._closed:
            return
        error = task.exception()
        self._broken(f"sender {task.get_name()}", error or RuntimeError("returned before close"))

    def _broken(self, what: str, error: BaseException) -> None:
        """Delivery cannot go on: producers are released (add takes nothing more), nothing more is acknowledged,
        and the trigger is told to stop rather than stall behind its heartbeats."""
        logger.error("Delivery stopped: %s failed", what, exc_info=error)
        self._fail(DeliveryBroken(f"Delivery stopped on an unexpected error in {what} ({error!r}): nothing more is "
                                  "sent or marked as read; the trigger stops, and what was not confirmed is "
                                  "collected again at the next start"))

    async def _sender(self, name: str) -> None:
        _sender_name.set(name)
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            confirmed = False
            try:
                confirmed = await self._deliver(batch)
            finally:  # whatever happened (cancelled by close too), the batch takes its turn: later ones never wait
                self._finished[batch.seq] = (batch, confirmed)
                self._acknowledge_in_order()

    async def _next_batch(self) -> _Batch | None:
        """The oldest cut batch; when none, the buffer once its oldest event is ``max_age`` old. None once closed."""
        while not self._ready:
            if self._closed:
                return None
            if self._batch and time.monotonic() - self._batch.started >= self.limits.max_age:
                self._cut()
                break
            self._idle += 1
            try:
                await self._wait_change()
            finally:
                self._idle -= 1
        batch = self._ready.popleft()
        self._notify()  # a producer may have room now
        return batch

    def _acknowledge_in_order(self) -> None:
        """Runs the acknowledgements of every finished batch whose turn came (synchronous: nothing interleaves)."""
        progressed = False
        while (entry := self._finished.pop(self._acked_count, None)) is not None:
            batch, confirmed = entry
            if not confirmed:
                self._failure = self._failure or "a batch was not confirmed"
            if self._failure is None:
                self._run_acks(batch)
            self._acked_count += 1
            progressed = True
        if progressed:
            metrics.pending_batches.labels(self.trigger).set(self.pending)
            self._notify()

    async def _deliver(self, batch: _Batch) -> bool:
        """Send one batch until every event was confirmed or set aside; False when it was not (then nothing
        later is sent either). An unexpected error is retried with backoff, like an outage: delivery never stops
        silently behind the heartbeats."""
        started = time.monotonic()
        backoff = self._backoff()
        while True:
            if self._failure is not None:
                return False
            try:
                refused = await self._send(batch.events, batch.origins)
                self._outage.ended("Delivery works again", key=UNEXPECTED)
                break
            except DeliveryAborted:
                metrics.delivery_batches.labels(self.trigger, "aborted").inc()
                self._aborted()
                return False
            except Misdirected as refusal:
                self._fail(self.sink.configuration_error(refusal))
                return False
            except Exception as error:  # noqa: BLE001 - a bug must not end the sender: the batch is sent again
                self._outage.began(f"Delivery failed unexpectedly ({error!r}); retrying the batch (some of its "
                                   "events may be sent twice)", "error", key=UNEXPECTED)
                try:
                    await self._pause(backoff.next_delay())
                except DeliveryAborted:
                    return False
        count = len(batch.events) - refused
        if count:
            self.delivered += count
            metrics.delivered_events.labels(self.trigger).inc(count)
            metrics.delivery_batches.labels(self.trigger, "confirmed").inc()
            metrics.delivery_seconds.labels(self.trigger).observe(time.monotonic() - started)
            if self._on_delivered:
                try:
                    self._on_delivered(count)
                except Exception as error:  # noqa: BLE001 - counting must not undo a delivery
                    self._log(f"Counting {count} delivered events failed ({error!r})", "error")
        return True

    def _aborted(self) -> None:
        """One line per stop, however many batches were left unconfirmed (none after a configuration error)."""
        if not self._abort_told and self.fatal_error is None:
            self._abort_told = True
            self._log("Stopped before the runtime confirmed every event: those not confirmed were not "
                      "marked as read and will be collected again at the next start", "warning")

    async def _prepare(self, events: list[bytes]) -> list[Request]:
        """The sink's requests: on the loop when it only encodes (CPU), off it when it writes files."""
        if self.sink.local_writes:
            return await asyncio.to_thread(self.sink.prepare, events)
        return self.sink.prepare(events)

    async def _clean_up(self, requests_: list[Request]) -> None:
        if any(request.cleanup is not None for request in requests_):
            await asyncio.to_thread(clean_up, requests_)

    async def _send(self, events: list[bytes], origins: list[str]) -> int:
        """Deliver a batch; the events the runtime refuses are isolated and set aside, one write per request.
        Returns how many were not sent."""
        if not events:
            return 0
        try:
            requests_ = await self._locally(lambda: self._prepare(events))
        except ValueError as error:  # an event the sink cannot encode (not UTF-8): find it like a refused one
            kept: list[Kept] = []
            await self._isolate(events, origins, Refused(0, f"cannot be encoded: {type(error).__name__}"), kept)
            return await self._set_aside(kept)
        refused = 0
        try:
            for request in requests_:
                span = slice(request.start, request.stop)
                kept = []
                await self._post_or_isolate(request, events[span], origins[span], kept)
                refused += await self._set_aside(kept)
        finally:
            await self._clean_up(requests_)
        return refused

    async def _try(self, events: list[bytes], origins: list[str], kept: list[Kept]) -> None:
        """Deliver part of a refused request; what is refused again goes on being isolated into ``kept``."""
        try:
            requests_ = await self._locally(lambda: self._prepare(events))
        except ValueError as error:
            if len(events) == 1:
                kept.append(Kept(events[0], origins[0], f"refused: cannot be encoded: {type(error).__name__}"))
                return
            await self._isolate(events, origins, Refused(0, f"cannot be encoded: {type(error).__name__}"), kept)
            return
        try:
            for request in requests_:
                span = slice(request.start, request.stop)
                await self._post_or_isolate(request, events[span], origins[span], kept)
        finally:
            await self._clean_up(requests_)

    async def _post_or_isolate(self, request: Request, events: list[bytes], origins: list[str],
                               kept: list[Kept]) -> None:
        try:
            await self._send_until_confirmed(request)
        except Refused as refusal:
            await self._isolate(events, origins, refusal, kept)

    async def _isolate(self, events: list[bytes], origins: list[str], refusal: Refused, kept: list[Kept]) -> None:
        """``events`` were refused together: halves are sent again until the refused events are alone."""
        if len(events) == 1:
            await self._refused_alone(events[0], origins[0], refusal, kept)
            return
        half = len(events) // 2
        await self._try(events[:half], origins[:half], kept)
        await self._try(events[half:], origins[half:], kept)

    async def _refused_alone(self, event: bytes, origin: str, refusal: Refused, kept: list[Kept]) -> None:
        """A lone event refused: too large for this intake (413), it goes once more shortened to half its size."""
        if refusal.status == 413:
            short = (await asyncio.to_thread(shorten, event, len(event) // 2)).event
            requests_ = await self._locally(lambda: self._prepare([short]))
            try:
                for request in requests_:
                    await self._send_until_confirmed(request)
                kept.append(Kept(event, origin, f"too large for the intake (HTTP 413): sent shortened to "
                                                f"{len(short)} bytes", sent=True))
                return
            except Refused as again:
                refusal = again
            finally:
                await self._clean_up(requests_)
        if refusal.status:
            kept.append(Kept(event, origin, f"refused: {refusal}"))
        else:
            kept.append(Kept(event, origin, f"refused: {refusal.detail}"))

    async def _locally(self, write: Callable[[], Awaitable[T]]) -> T:
        """A local write (records file, set-aside file), retried with backoff while it fails (a full disk)."""
        backoff = self._backoff()
        while True:
            if self._failure is not None:
                raise DeliveryAborted(self._failure)
            try:
                result = await write()
            except OSError as error:
                self._local_trouble.began(f"Delivery cannot write to the local disk ({error}): retrying until it "
                                          "can; nothing more is marked as read meanwhile", "error")
                await self._pause(backoff.next_delay())
                continue
            self._local_trouble.ended("Local writes work again; delivery resumed")
            return result

    def _run_acks(self, batch: _Batch) -> None:
        for ack in batch.acks:
            if self._closed and self._failure is not None:
                return  # closed with batches unconfirmed: the trigger closes its state next, no ack may touch it
            try:
                ack()
            except Exception as error:  # noqa: BLE001 - one failed checkpoint must not stop the others
                self._log(
                    f"Saving progress after a confirmed delivery failed ({error!r}): the events were delivered "
                    "and may be delivered again after a restart",
                    "error",
                )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = client_session(self.limits.senders, self.sink.url)
        return self._session

    async def _send_until_confirmed(self, request: Request) -> None:
        backoff = self._backoff()
        while True:
            if self._failure is not None:
                raise DeliveryAborted(self._failure)
            try:
                await self._post(request)
                self._outage_ended()
                self._refused_in_a_row = 0
                return
            except Refused as refusal:
                self._outage_ended()  # the runtime answered
                self._count_refusal(refusal)
                raise
            except Misdirected:
                self._outage_ended()
                raise
            except RetryableError as error:
                metrics.delivery_retries.labels(self.trigger).inc()
                self._outage_began(error)
                await self._pause(backoff.next_delay(error.retry_after))

    def _count_refusal(self, refusal: Refused) -> None:
        self._refused_in_a_row += 1
        if self._refused_in_a_row >= REFUSES_EVERYTHING_REQUESTS:
            raise Misdirected(refusal.status, f"{self._refused_in_a_row} requests in a row refused, none confirmed "
                                              f"in between: {refusal.detail}")

    async def _post(self, request: Request) -> None:
        """One attempt, watched: the sender's reading is behind while its request is on the wire."""
        watch, reading = self._progress, _sender_name.get()
        if watch is not None:
            watch.progressed(reading)
            watch.behind(reading, True)
        try:
            await post(self._client(), request, self._attempt_timeout())
        finally:
            if watch is not None:
                watch.behind(reading, False)
                watch.progressed(reading)

    async def _pause(self, delay: float) -> None:
        """A backoff sleep, cut short when a stop begins (one more attempt within the grace) or delivery fails;
        raises DeliveryAborted when stopping leaves no time for it."""
        stop_at = self._abort_at
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
        while self._failure is None and (left := end - time.monotonic()) > 0:
            await self._wait_change(left)

    def _attempt_timeout(self) -> aiohttp.ClientTimeout:
        """The usual timeouts, or once stopping what is left before the deadline (none left: no attempt)."""
        if self._abort_at is None:
            return self._usual_timeout
        left = self._abort_at - time.monotonic()
        if left <= 0:
            raise DeliveryAborted("stop deadline reached")
        return aiohttp.ClientTimeout(total=left, sock_connect=min(self._timeout[0], left),
                                     sock_read=min(self._timeout[1], left))

    def _fail(self, error: ConfigurationError) -> None:
        """A configuration error: nothing more is sent or acknowledged; the trigger is told once, to stop."""
        first = self.fatal_error is None
        if first:
            self.fatal_error = error
            self._failure = str(error)
        self._notify()
        if first:
            if self._on_fatal is not None:
                self._on_fatal(error)
            else:
                self._log(str(error), "critical")

    # One warning when the runtime stops answering and one line when it is back, whatever the number of
    # senders, batches and attempts in between.

    def _outage_began(self, error: RetryableError) -> None:
        self._outage.began(f"Delivery to the runtime failed, retrying until it succeeds: {error}")

    def _outage_ended(self) -> None:
        self._outage.ended("Runtime reachable again; delivery resumed")


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
