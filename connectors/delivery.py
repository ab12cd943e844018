"""Delivery to the Sekoia runtime: batching, two ways out, answers classified, acknowledgements after confirmation.

A trigger hands serialized events to a ``Forwarder`` together with an acknowledgement callback (save a
checkpoint, record a blob as done). The forwarder buffers them, cuts batches on count, bytes or age, and
delivery threads send each batch through a ``Sink`` (the intake ``/batch`` API, or a playbook event pointing at
a records file) until the runtime confirms it. Only then are the batch's acknowledgements called, in the order
they were added, so nothing is ever marked as read before it was delivered.

The runtime's answers, for both sinks:

- 2xx: confirmed.
- 408, 425, 429, 5xx, timeouts, connection errors: retried with backoff (``Retry-After`` honoured), forever.
- 401, 403, 404, 405 and redirects: the configuration is wrong (intake key, intake server, playbook token).
  Nothing more is sent or acknowledged; ``on_fatal`` gets a ``ConfigurationError`` naming the field.
- Any other 4xx (400, 413, 422...): the runtime refuses the request for good. It is split in halves, each sent
  again, until the refused events are alone; each is set aside (kept in a local file, counted, logged once with
  where it came from) and the rest goes on. The resume point never waits on one event.

An event over the intake's 250,000-byte limit is sent shortened (``connectors.truncation``) and kept whole in
the same local file.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import orjson
import requests
from sekoia_automation.constants import EVENT_BYTES_MAX_SIZE, INTAKE_PAYLOAD_BYTES_MAX_SIZE

from connectors import metrics
from connectors.errors import ConfigurationError
from connectors.logs import OnceLogger
from connectors.retry import Backoff, parse_retry_after
from connectors.state import Journal
from connectors.truncation import digest, shorten

logger = logging.getLogger(__name__)

Ack = Callable[[], None]
LogFunction = Callable[[str, str], None]  # (message, level)

_ENVELOPE_BYTES = 1024  # room for the `{"intake_key": ..., "jsons": [...]}` around the events
# Seconds a stopping trigger gives delivery, counted from the stop request: with the rest of the stop path the
# process ends well within the 20 s an orchestrator waits, whatever the runtime does.
STOP_GRACE_SECONDS = 8.0

RETRIED_STATUSES = frozenset({408, 425, 429})
CONFIGURATION_STATUSES = frozenset({401, 403, 404, 405})


@dataclass(frozen=True)
class BatchLimits:
    max_events: int = 10_000
    # Of raw events; escaping inside `jsons` can add a third. Each batch is held several times over (buffered,
    # queued, encoded, on the wire): 1 MB keeps a busy trigger's memory near 150 MB at the same throughput as 4 MB.
    max_bytes: int = 1_000_000
    max_age: float = 1.0  # seconds the oldest buffered event may wait
    in_flight: int = 2  # batches queued behind those being delivered: backpressure on the trigger
    senders: int = 2  # batches sent at once: the runtime handles one while the next is on the wire


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The runtime refused a request for good (400, 413...): sending it again as it is cannot succeed."""


class Misdirected(Exception):
    """The runtime refused the credentials or has no such endpoint (401, 403, 404, 405, a redirect)."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class DeliveryAborted(Exception):
    """Stopping with a batch the runtime never confirmed: its acknowledgements are not called."""


@dataclass
class Request:
    """One HTTP call to the runtime: events ``[start, stop)`` of the list given to ``prepare``."""

    url: str
    body: bytes
    headers: dict[str, str]
    start: int
    stop: int
    cleanup: Path | None = None


class Sink(Protocol):
    def prepare(self, events: list[bytes]) -> list[Request]: ...

    def configuration_error(self, refusal: Misdirected) -> ConfigurationError: ...


def _post(session: requests.Session, request: Request, timeout: tuple[float, float]) -> None:
    """Confirmed, or raises what the answer means: RetryableError, Refused or Misdirected."""
    try:
        response = session.post(request.url, data=request.body, headers=request.headers, timeout=timeout,
                                allow_redirects=False)  # a redirected POST turns into a GET that "succeeds"
    except requests.RequestException as error:
        raise RetryableError(f"runtime unreachable: {type(error).__name__}") from None
    status = response.status_code
    if status < 300:
        return
    detail = response.text[:200].replace("\n", " ")
    if status >= 500 or status in RETRIED_STATUSES:
        raise RetryableError(f"runtime answered HTTP {status}: {detail}",
                             parse_retry_after(response.headers.get("Retry-After")))
    if status < 400:
        raise Misdirected(status, f"redirects to {response.headers.get('Location', '?')}")
    if status in CONFIGURATION_STATUSES:
        raise Misdirected(status, detail)
    raise Refused(f"HTTP {status}: {detail}")


class IntakeSink:
    """POSTs ``{"intake_key": KEY, "jsons": [str, ...]}`` to ``{intake}/batch``, in chunks under the payload limit."""

    def __init__(self, intake_url: str, intake_key: str, user_agent: str):
        self.url = intake_url.rstrip("/") + "/batch"
        self._prefix = b'{"intake_key":' + orjson.dumps(intake_key) + b',"jsons":['
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent}

    def prepare(self, events: list[bytes]) -> list[Request]:
        limit = INTAKE_PAYLOAD_BYTES_MAX_SIZE - _ENVELOPE_BYTES
        if not events:
            return []
        # The usual case, one request: a single orjson call for the whole list costs a fifth of one call per
        # event (measured on 1 KB events), and gives the same bytes as the chunked path below.
        whole = orjson.dumps([event.decode("utf-8") for event in events])
        if len(whole) <= limit:
            # One copy into the body (concatenating would make one per operand): batches are megabytes.
            body = b"".join((self._prefix, memoryview(whole)[1:], b"}"))
            return [Request(self.url, body, self._headers, 0, len(events))]
        requests_, chunk, size, start = [], [], 0, 0
        for index, event in enumerate(events):
            encoded = orjson.dumps(event.decode("utf-8"))  # each event travels as a JSON string
            if chunk and size + len(encoded) + 1 > limit:
                requests_.append(self._request(chunk, start, index))
                chunk, size, start = [], 0, index
            chunk.append(encoded)
            size += len(encoded) + 1
        if chunk:
            requests_.append(self._request(chunk, start, len(events)))
        return requests_

    def _request(self, chunk: list[bytes], start: int, stop: int) -> Request:
        return Request(self.url, b"".join((self._prefix, b",".join(chunk), b"]}")), self._headers, start, stop)

    def configuration_error(self, refusal: Misdirected) -> ConfigurationError:
        if refusal.status in (401, 403):
            return ConfigurationError(
                "intake_key", f"the intake at {_origin(self.url)} refused it (HTTP {refusal.status}): copy the key "
                "shown on the intake's page in Sekoia.io")
        return ConfigurationError(
            "intake_server", f"{self.url} is not an intake batch API ({refusal}): set it to the intake's base URL "
            "(e.g. https://intake.sekoia.io), or leave it empty to use the runtime's")


class PlaybookSink:
    """Writes the records to a file in the data path and sends a playbook event pointing at it (SDK's send_records)."""

    def __init__(self, callback_url: str, token: str, data_path: Path, trigger_name: str):
        self.url = callback_url
        self.data_path = Path(data_path)
        self.trigger_name = trigger_name
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def prepare(self, events: list[bytes]) -> list[Request]:
        directory = self.data_path / f"{self.trigger_name}_events" / str(uuid.uuid4())
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "event.json").write_bytes(b"[" + b",".join(events) + b"]")
        body = orjson.dumps(
            {
                "name": f"{self.trigger_name}-{len(events)}-records",
                "event": {"records_path": "event.json"},
                "directory": str(directory.relative_to(self.data_path)),
                "request_id": str(uuid.uuid4()),
            }
        )
        return [Request(self.url, body, self._headers, 0, len(events), cleanup=directory)]

    def configuration_error(self, refusal: Misdirected) -> ConfigurationError:
        # Without an intake key, events go to the playbook through the runtime's callback URL and token.
        return ConfigurationError(
            "intake_key", f"without it, records go to the playbook, but the runtime refused the trigger's callback "
            f"({_origin(self.url)}, {refusal}): the playbook was deleted or its token revoked; restart the playbook, "
            "or set `intake_key` to send to an intake")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class SetAsideStore:
    """Keeps, in a capped file, the full events the intake could not take as they were: over its 250,000-byte
    limit (they were sent shortened) or refused by the runtime (not sent). None disappears silently."""

    def __init__(self, path: Path, cap_bytes: int = 200_000_000):
        self.journal = Journal(path)
        self.cap_bytes = cap_bytes
        self.written = path.stat().st_size if path.exists() else 0
        self._lock = threading.Lock()  # producers (oversize) and senders (refused) both write

    @property
    def path(self) -> Path:
        return self.journal.path

    def keep(self, event: bytes, origin: str, reason: str) -> bool:
        entry = {"origin": origin, "reason": reason, "bytes": len(event), "sha256": digest(event),
                 "event": event.decode("utf-8", "replace")}
        with self._lock:
            if self.written + len(event) > self.cap_bytes:
                return False
            self.journal.append([entry])
            self.written += len(event) + 256
        return True


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
        self._failure: str | None = None
        self._abort_told = False
        self.fatal_error: ConfigurationError | None = None
        self.delivered = 0
        self.shortened = 0
        self.refused = 0
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
        added = 0
        with self._lock:
            if self._failure is not None:
                return 0  # a batch was not confirmed: nothing after it can be acknowledged, so nothing is taken
            for event in events:
                if len(event) > EVENT_BYTES_MAX_SIZE:
                    event = self._shorten(event, origin)
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

        Safe from a signal handler: it only sets values (no lock), and waiters poll them.
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

    def _keep(self, event: bytes, origin: str, reason: str) -> str:
        store = self._set_aside_store
        if store is not None and store.keep(event, origin, reason):
            return f"kept in {store.path}"
        return "not kept (the set-aside file is full or disabled)"

    def _shorten(self, event: bytes, origin: str) -> bytes:
        """An event over the intake's limit: kept whole locally, sent shortened (rare: the lock stays held)."""
        where = self._keep(event, origin, "oversize")
        short = shorten(event, EVENT_BYTES_MAX_SIZE)
        self.shortened += 1
        metrics.oversize_events.labels(self.trigger).inc()
        cut = ", ".join(short.fields[:5]) + (f" and {len(short.fields) - 5} more" if len(short.fields) > 5 else "")
        self._log(
            f"Event of {len(event)} bytes from {origin or 'unknown origin'} is over the intake limit of "
            f"{EVENT_BYTES_MAX_SIZE} bytes: sent shortened to {len(short.event)} bytes ({f'cut: {cut}' if cut else 'text cut'}, "
            f"marked `sekoia_truncated`); the full event (sha256 {short.sha256}) is {where}",
            "warning",
        )
        return short.event

    def _set_aside_refused(self, event: bytes, origin: str, reason: str) -> None:
        where = self._keep(event, origin, f"refused: {reason}")
        with self._lock:
            self.refused += 1
        metrics.refused_events.labels(self.trigger).inc()
        self._log(
            f"The runtime refused an event of {len(event)} bytes from {origin or 'unknown origin'} ({reason}); it "
            f"was not sent and is {where} (sha256 {digest(event)}); delivery goes on",
            "warning",
        )

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
            confirmed = self._deliver(batch)
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
        later is sent either)."""
        if self._failure is not None:
            return False
        started = time.monotonic()
        try:
            refused = self._send(batch.events, batch.origins)
        except DeliveryAborted:
            metrics.delivery_batches.labels(self.trigger, "aborted").inc()
            if not self._abort_told and self.fatal_error is None:  # one line per stop, however many batches were on the way
                self._abort_told = True
                self._log("Stopped before the runtime confirmed every event: those not confirmed were not marked "
                          "as read and will be collected again at the next start", "warning")
            return False
        except Misdirected as refusal:
            self._fail(self.sink.configuration_error(refusal))
            return False
        count = len(batch.events) - refused
        if count:
            with self._lock:
                self.delivered += count
            metrics.delivered_events.labels(self.trigger).inc(count)
            metrics.delivery_batches.labels(self.trigger, "confirmed").inc()
            metrics.delivery_seconds.labels(self.trigger).observe(time.monotonic() - started)
            if self._on_delivered:
                self._on_delivered(count)
        return True

    def _send(self, events: list[bytes], origins: list[str]) -> int:
        """Deliver ``events``: refused requests are split until each refused event is alone, and set aside.
        Returns how many were set aside."""
        if not events:
            return 0
        try:
            requests_ = self.sink.prepare(events)
        except ValueError as error:  # an event the sink cannot encode (not UTF-8): find it like a refused one
            return self._split(events, origins, f"cannot be encoded: {type(error).__name__}")
        refused = 0
        try:
            for request in requests_:
                try:
                    self._send_until_confirmed(request)
                except Refused as refusal:
                    span = slice(request.start, request.stop)
                    refused += self._split(events[span], origins[span], str(refusal))
        finally:
            for request in requests_:
                if request.cleanup is not None:
                    shutil.rmtree(request.cleanup, ignore_errors=True)
        return refused

    def _split(self, events: list[bytes], origins: list[str], reason: str) -> int:
        if len(events) == 1:
            self._set_aside_refused(events[0], origins[0], reason)
            return 1
        half = len(events) // 2
        return self._send(events[:half], origins[:half]) + self._send(events[half:], origins[half:])

    def _run_acks(self, batch: _Batch) -> None:
        for ack in batch.acks:
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
                _post(self._session, request, self._attempt_timeout())
                self._outage_ended()
                return
            except (Refused, Misdirected):
                self._outage_ended()  # the runtime answered
                raise
            except RetryableError as error:
                metrics.delivery_retries.labels(self.trigger).inc()
                self._outage_began(error)
                delay = backoff.next_delay(error.retry_after)
                if self._abort_at is not None and time.monotonic() + delay > self._abort_at:
                    raise DeliveryAborted(str(error)) from None
                self._wake.wait(delay)

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
