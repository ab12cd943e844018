"""Delivery to the Sekoia runtime: batching, two ways out, answers classified, acknowledgements after confirmation.

A trigger hands serialized events to a ``Forwarder`` together with an acknowledgement callback (save a
checkpoint, record a blob as done). The forwarder buffers them, cuts batches on count, bytes or age, and
delivery threads send each batch through a ``Sink`` (``connectors.sinks``: the intake ``/batch`` API, or a
playbook event pointing at a records file) until the runtime confirms it. Only then are the batch's acknowledgements called, in the order
they were added, so nothing is ever marked as read before it was delivered.

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

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import requests
from sekoia_automation.constants import EVENT_BYTES_MAX_SIZE

from connectors import metrics
from connectors.errors import ConfigurationError
from connectors.logs import OnceLogger
from connectors.retry import Backoff
from connectors.setaside import Kept, SetAsideStore
from connectors.sinks import Misdirected, Refused, Request, RetryableError, Sink, clean_up, post
from connectors.truncation import digest, shorten

logger = logging.getLogger(__name__)

Ack = Callable[[], None]
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
SLEEP_SLICE = 0.25  # a backoff sleep looks this often whether a stop began (stopping() may run in a signal handler)


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
    """Buffers events, delivers them in batches on sender threads, and acknowledges after the runtime confirmed.

    Batches are numbered in the order they were cut, under one lock. Several may be on the wire at once, but
    their acknowledgements run strictly in that order, each only once every batch before it was confirmed: an
    acknowledgement never runs before every event added ahead of it was delivered, whichever thread adds,
    flushes or sends. After a batch that was never confirmed (stopping, a configuration error), nothing more is
    sent and no later acknowledgement runs.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        trigger: str,
        limits: BatchLimits = BatchLimits(),
        log: LogFunction | None = None,
        set_aside: SetAsideStore | None = None,
        session: requests.Session | None = None,
        # A slow intake may take over a minute to answer: giving up sooner would resend (duplicates) forever.
        # Stopping does not wait for it: attempts are then bounded by the stop deadline.
        timeout: tuple[float, float] = (10.0, 120.0),
        backoff: Callable[[], Backoff] = lambda: Backoff(base=0.5, cap=30.0),
        on_delivered: Callable[[int], None] | None = None,
        on_fatal: Callable[[ConfigurationError], None] | None = None,
    ):
        self.sink = sink
        self.trigger = trigger
        self.limits = limits
        self._log = log or (lambda message, level: logger.log(logging.getLevelName(level.upper()), message))
        self._set_aside_store = set_aside
        self._session = session or requests.Session()
        self._timeout = timeout
        self._backoff = backoff
        self._on_delivered = on_delivered
        self._on_fatal = on_fatal
        self._lock = threading.Condition()
        self._batch = _Batch()
        self._ready: deque[_Batch] = deque()
        self._cut_count = 0  # batches cut so far: the next batch's number
        self._acked_count = 0  # batches whose acknowledgements ran (or were dropped): all below this number
        self._finished: dict[int, tuple[_Batch, bool]] = {}  # sent batches waiting for their turn to be acked
        self._ack_turn = threading.Lock()  # one thread at a time runs acknowledgements, in order
        self._closed = False
        self._abort_at: float | None = None  # once stopping: no attempt starts or waits past this moment
        self._wake = threading.Event()  # cuts a backoff sleep short when stopping or failing
        self._outage = OnceLogger(self._log)
        self._local_trouble = OnceLogger(self._log)  # a local write failing (full disk): said once, retried
        self._unexpected = OnceLogger(self._log)
        self._failure: str | None = None
        self._abort_told = False
        self.fatal_error: ConfigurationError | None = None
        self.delivered = 0
        self.shortened = 0
        self.refused = 0
        self._refused_in_a_row = 0  # requests the runtime refused since it last confirmed one, across senders
        # Daemon threads: one blocked in an HTTP call when the process ends is abandoned, never waited for.
        self._threads = [
            threading.Thread(target=self._deliver_loop, name=f"deliver-{trigger}-{n}", daemon=True)
            for n in range(max(1, limits.senders))
        ]
        for thread in self._threads:
            thread.start()

    # -- producer side -------------------------------------------------------------------------------------

    def add(self, events: Iterable[bytes], ack: Ack | None = None, origin: str = "") -> int:
        """Buffer serialized events (one JSON document each); ``ack`` runs once all of them were confirmed."""
        if self._failure is not None:
            return 0  # a batch was not confirmed: nothing after it can be acknowledged, so nothing is taken
        events = self._fit(events, origin)  # outside the lock: shortening and keeping are slow
        added = 0
        with self._lock:
            if self._failure is not None:
                return 0
            for event in events:
                batch = self._current()
                batch.events.append(event)
                batch.origins.append(origin)
                batch.size += len(event)
                added += 1
                if len(batch.events) >= self.limits.max_events or batch.size >= self.limits.max_bytes:
                    self._cut()
                    self._wait_for_room()
            if ack is not None:
                if self._batch or not self._ready:
                    self._current().acks.append(ack)
                else:  # the unit ended exactly on a batch boundary: ride with its last events
                    self._ready[-1].acks.append(ack)
        return added

    def _wait_for_room(self) -> None:
        """Backpressure (caller holds the lock): the producer waits while the runtime is behind, unless stopping."""
        while len(self._ready) > self.limits.in_flight and self._abort_at is None and self._failure is None:
            self._lock.wait(1.0)

    def flush(self) -> None:
        """Queue the current buffer for delivery now (acknowledgements alone are queued too)."""
        with self._lock:
            self._cut()

    def drain(self, timeout: float | None = None) -> bool:
        """Flush and wait until every queued batch was confirmed (or aborted). True when all were confirmed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._cut()
            while self._acked_count < self._cut_count:
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 1.0))
        return self._failure is None

    def stopping(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """The trigger was asked to stop: delivery gets ``grace`` seconds from now, producers stop waiting for room.

        Safe from a signal handler: it only sets values (no lock), and waiters poll them (a sender sleeping
        between attempts looks every ``SLEEP_SLICE`` and makes one more attempt).
        """
        deadline = time.monotonic() + grace
        if self._abort_at is None or deadline < self._abort_at:
            self._abort_at = deadline

    def close(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        """Deliver what is buffered until the stop deadline (``grace`` from now, or sooner if ``stopping`` set
        one), then stop; returns by that deadline even when a sender is stuck in an HTTP call. True when every
        batch was confirmed. Batches not confirmed by then are never acknowledged."""
        with self._lock:
            if self._closed:
                return self._failure is None and self._acked_count == self._cut_count
        self.stopping(grace)
        deadline = self._abort_at or time.monotonic()
        confirmed = self.drain(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._closed = True
            if self._acked_count < self._cut_count:
                self._failure = self._failure or "stopped before the runtime confirmed every batch"
            self._lock.notify_all()
        self._wake.set()
        # An acknowledgement under way finishes before close returns (the trigger closes its state next); a sender
        # stuck in an HTTP call is left behind: its batch will not be acknowledged.
        if self._ack_turn.acquire(timeout=max(0.5, deadline - time.monotonic())):
            self._ack_turn.release()
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return confirmed

    @property
    def pending(self) -> int:
        """Batches cut and not yet acknowledged."""
        return self._cut_count - self._acked_count

    @property
    def set_aside_path(self) -> Path | None:
        """Where the full events that were shortened or refused are kept."""
        return self._set_aside_store.path if self._set_aside_store is not None else None

    @property
    def outage_seconds(self) -> float | None:
        """How long the runtime has been failing to confirm (None: it answers)."""
        return self._outage.lasting()

    def _current(self) -> _Batch:
        if not self._batch:
            self._batch.started = time.monotonic()
        return self._batch

    def _cut(self) -> None:
        """Queue the current batch (caller holds the lock)."""
        if self._batch:
            self._batch.seq = self._cut_count
            self._cut_count += 1
            self._ready.append(self._batch)
            self._batch = _Batch()
            metrics.pending_batches.labels(self.trigger).set(self.pending)
            self._lock.notify_all()

    # -- events the intake cannot take as they are -----------------------------------------------------------

    def _fit(self, events: Iterable[bytes], origin: str) -> list[bytes]:
        """``events`` with those over the intake's limit shortened; their originals kept (one write per call)."""
        events = list(events)  # a copy: the caller's list stays as it was
        oversize = [index for index, event in enumerate(events) if len(event) > EVENT_BYTES_MAX_SIZE]
        if not oversize:
            return events
        originals, lines = [], []
        for index in oversize:
            event = events[index]
            short = shorten(event, EVENT_BYTES_MAX_SIZE)
            events[index] = short.event
            originals.append(Kept(event, origin, "oversize", sent=True))
            cut = ", ".join(short.fields[:5]) + (f" and {len(short.fields) - 5} more" if len(short.fields) > 5 else "")
            lines.append(
                f"Event of {len(event)} bytes from {origin or 'unknown origin'} is over the intake limit of "
                f"{EVENT_BYTES_MAX_SIZE} bytes: sent shortened to {len(short.event)} bytes "
                f"({f'cut: {cut}' if cut else 'text cut'}, marked `sekoia_truncated`); the full event (sha256 "
                f"{short.sha256}) is ")
        try:
            where = self._where(self._set_aside_store is not None and self._set_aside_store.keep(originals))
        except OSError as error:  # the shortened events still go: only the local copy is missing
            where = f"not kept (the set-aside file cannot be written: {error})"
        with self._lock:
            self.shortened += len(oversize)
        metrics.oversize_events.labels(self.trigger).inc(len(oversize))
        for line in lines:
            self._log(line + where, "warning")
        return events

    def _where(self, kept: bool) -> str:
        if kept:
            return f"kept in {self._set_aside_store.path}"  # type: ignore[union-attr]
        if self._set_aside_store is None:
            return "not kept (no set-aside file)"
        return f"not kept ({self._set_aside_store.path} is at its cap of {self._set_aside_store.cap_bytes} bytes)"

    def _set_aside(self, kept: list[Kept]) -> int:
        """Keep the events of one request the runtime would not take as they were (one write, one line per kind);
        returns how many were not sent. Refused events that cannot be kept stop everything: nothing past them is
        acknowledged (raises DeliveryAborted)."""
        if not kept:
            return 0
        stored = self._locally(lambda: self._set_aside_store is not None and self._set_aside_store.keep(kept))
        refused = [entry for entry in kept if not entry.sent]
        shortened = [entry for entry in kept if entry.sent]
        if refused and not stored:
            self._fail(UnkeptRefusal(
                f"The runtime refused {_count(refused)} ({refused[0].reason}) from {_origins(refused)}, and they "
                f"cannot be kept: {self._where(False).removeprefix('not kept (').rstrip(')')}. They were not "
                "marked as read and delivery stopped. Look at why the runtime refuses them; move the set-aside "
                "file elsewhere (keep its events) or set up one, then restart: they will be collected again"))
            raise DeliveryAborted("refused events cannot be kept")
        where = self._where(stored)
        if shortened:
            with self._lock:
                self.shortened += len(shortened)
            metrics.oversize_events.labels(self.trigger).inc(len(shortened))
            self._log(f"The runtime refused {_count(shortened)} as too large (HTTP 413) from "
                      f"{_origins(shortened)}: sent shortened to half their size (marked `sekoia_truncated`); the "
                      f"full events are {where}", "warning")
        if refused:
            with self._lock:
                self.refused += len(refused)
            metrics.refused_events.labels(self.trigger).inc(len(refused))
            hashes = ", ".join(digest(entry.event) for entry in refused[:ORIGINS_NAMED])
            self._log(f"The runtime refused {_count(refused)} ({refused[0].reason.removeprefix('refused: ')}) from "
                      f"{_origins(refused)}: not "
                      f"sent, {where} (sha256 {hashes}{', ...' if len(refused) > ORIGINS_NAMED else ''}); delivery "
                      "goes on", "warning")
        return len(refused)

    # -- delivery threads ----------------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        while True:
            with self._lock:
                while not self._ready and not self._closed:
                    if self._batch and time.monotonic() - self._batch.started >= self.limits.max_age:
                        self._cut()
                        break
                    self._lock.wait(self.limits.max_age / 4)
                if not self._ready:
                    return  # closed and nothing left
                batch = self._ready.popleft()
                self._lock.notify_all()
            confirmed = False
            try:
                confirmed = self._deliver(batch)
            finally:  # whatever happened, the batch takes its turn: later acknowledgements never wait on it forever
                with self._lock:
                    self._finished[batch.seq] = (batch, confirmed)
                self._acknowledge_in_order()

    def _acknowledge_in_order(self) -> None:
        with self._ack_turn:
            while True:
                with self._lock:
                    entry = self._finished.pop(self._acked_count, None)
                    if entry is None:
                        return
                    batch, confirmed = entry
                    if not confirmed:
                        self._failure = self._failure or "a batch was not confirmed"
                    failed = self._failure is not None
                if not failed:
                    self._run_acks(batch)
                with self._lock:
                    self._acked_count += 1
                    metrics.pending_batches.labels(self.trigger).set(self.pending)
                    self._lock.notify_all()

    def _deliver(self, batch: _Batch) -> bool:
        """Send one batch until every event was confirmed or set aside; False when it was not (then nothing
        later is sent either). An unexpected error is retried with backoff, like an outage: delivery never stops
        silently behind the heartbeats."""
        started = time.monotonic()
        backoff = self._backoff()
        while True:
            if self._failure is not None:
                return False
            try:
                refused = self._send(batch.events, batch.origins)
                self._unexpected.ended("Delivery works again")
                break
            except DeliveryAborted:
                metrics.delivery_batches.labels(self.trigger, "aborted").inc()
                if not self._abort_told and self.fatal_error is None:  # one line per stop, however many batches
                    self._abort_told = True
                    self._log("Stopped before the runtime confirmed every event: those not confirmed were not "
                              "marked as read and will be collected again at the next start", "warning")
                return False
            except Misdirected as refusal:
                self._fail(self.sink.configuration_error(refusal))
                return False
            except Exception as error:  # noqa: BLE001 - a bug must not end the thread: the batch is sent again
                self._unexpected.began(f"Delivery failed unexpectedly ({error!r}); retrying the batch (some of its "
                                       "events may be sent twice)", "error")
                try:
                    self._pause(backoff.next_delay())
                except DeliveryAborted:
                    return False
        count = len(batch.events) - refused
        if count:
            with self._lock:
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

    def _send(self, events: list[bytes], origins: list[str]) -> int:
        """Deliver a batch; the events the runtime refuses are isolated and set aside, one write per request.
        Returns how many were not sent."""
        if not events:
            return 0
        try:
            requests_ = self._locally(lambda: self.sink.prepare(events))
        except ValueError as error:  # an event the sink cannot encode (not UTF-8): find it like a refused one
            kept: list[Kept] = []
            self._isolate(events, origins, Refused(0, f"cannot be encoded: {type(error).__name__}"), kept)
            return self._set_aside(kept)
        refused = 0
        try:
            for request in requests_:
                span = slice(request.start, request.stop)
                kept = []
                self._post_or_isolate(request, events[span], origins[span], kept)
                refused += self._set_aside(kept)
        finally:
            clean_up(requests_)
        return refused

    def _try(self, events: list[bytes], origins: list[str], kept: list[Kept]) -> None:
        """Deliver part of a refused request; what is refused again goes on being isolated into ``kept``."""
        try:
            requests_ = self._locally(lambda: self.sink.prepare(events))
        except ValueError as error:
            if len(events) == 1:
                kept.append(Kept(events[0], origins[0], f"refused: cannot be encoded: {type(error).__name__}"))
                return
            self._isolate(events, origins, Refused(0, f"cannot be encoded: {type(error).__name__}"), kept)
            return
        try:
            for request in requests_:
                span = slice(request.start, request.stop)
                self._post_or_isolate(request, events[span], origins[span], kept)
        finally:
            clean_up(requests_)

    def _post_or_isolate(self, request: Request, events: list[bytes], origins: list[str], kept: list[Kept]) -> None:
        try:
            self._send_until_confirmed(request)
        except Refused as refusal:
            self._isolate(events, origins, refusal, kept)

    def _isolate(self, events: list[bytes], origins: list[str], refusal: Refused, kept: list[Kept]) -> None:
        """``events`` were refused together: halves are sent again until the refused events are alone."""
        if len(events) == 1:
            self._refused_alone(events[0], origins[0], refusal, kept)
            return
        half = len(events) // 2
        self._try(events[:half], origins[:half], kept)
        self._try(events[half:], origins[half:], kept)

    def _refused_alone(self, event: bytes, origin: str, refusal: Refused, kept: list[Kept]) -> None:
        """A lone event refused: too large for this intake (413), it goes once more shortened to half its size."""
        if refusal.status == 413:
            short = shorten(event, len(event) // 2).event
            requests_ = self._locally(lambda: self.sink.prepare([short]))
            try:
                for request in requests_:
                    self._send_until_confirmed(request)
                kept.append(Kept(event, origin, f"too large for the intake (HTTP 413): sent shortened to "
                                                f"{len(short)} bytes", sent=True))
                return
            except Refused as again:
                refusal = again
            finally:
                clean_up(requests_)
        if refusal.status:
            kept.append(Kept(event, origin, f"refused: {refusal}", by_runtime=True))
        else:
            kept.append(Kept(event, origin, f"refused: {refusal.detail}"))

    def _locally(self, write: Callable[[], T]) -> T:
        """A local write (records file, set-aside file), retried with backoff while it fails (a full disk)."""
        backoff = self._backoff()
        while True:
            if self._failure is not None:
                raise DeliveryAborted(self._failure)
            try:
                result = write()
            except OSError as error:
                self._local_trouble.began(f"Delivery cannot write to the local disk ({error}): retrying until it "
                                          "can; nothing more is marked as read meanwhile", "error")
                self._pause(backoff.next_delay())
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

    def _send_until_confirmed(self, request: Request) -> None:
        backoff = self._backoff()
        while True:
            if self._failure is not None:
                raise DeliveryAborted(self._failure)
            try:
                post(self._session, request, self._attempt_timeout())
                self._outage_ended()
                with self._lock:
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
                self._pause(backoff.next_delay(error.retry_after))

    def _count_refusal(self, refusal: Refused) -> None:
        with self._lock:
            self._refused_in_a_row += 1
            in_a_row = self._refused_in_a_row
        if in_a_row >= REFUSES_EVERYTHING_REQUESTS:
            raise Misdirected(refusal.status, f"{in_a_row} requests in a row refused, none confirmed in between: "
                                              f"{refusal.detail}")

    def _pause(self, delay: float) -> None:
        """A backoff sleep, cut short when a stop begins (one more attempt within the grace) or delivery fails;
        raises DeliveryAborted when stopping leaves no time for it. Polls in slices: ``stopping`` may run in a
        signal handler, which must not take the lock an Event's set would."""
        stop_at = self._abort_at
        if stop_at is not None and time.monotonic() + delay > stop_at:
            raise DeliveryAborted("the stop deadline comes before the next attempt")
        end = time.monotonic() + delay
        while self._failure is None and self._abort_at == stop_at:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(left, SLEEP_SLICE))

    def _attempt_timeout(self) -> tuple[float, float]:
        """The usual timeouts, or once stopping what is left before the deadline (none left: no attempt)."""
        if self._abort_at is None:
            return self._timeout
        left = self._abort_at - time.monotonic()
        if left <= 0:
            raise DeliveryAborted("stop deadline reached")
        return min(self._timeout[0], left), min(self._timeout[1], left)

    def _fail(self, error: ConfigurationError) -> None:
        """A configuration error: nothing more is sent or acknowledged; the trigger is told once, to stop."""
        with self._lock:
            first = self.fatal_error is None
            if first:
                self.fatal_error = error
                self._failure = str(error)
            self._lock.notify_all()
        self._wake.set()
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
