"""Delivery to the Sekoia runtime: batching, two ways out, retries, and acknowledgements after confirmation.

A trigger hands serialized events to a ``Forwarder`` together with an acknowledgement callback (save a
checkpoint, record a blob as done). The forwarder buffers them, cuts batches on count, bytes or age, and a
single delivery thread sends each batch through a ``Sink`` (the intake ``/batch`` API, or a playbook event
pointing at a records file) until the runtime confirms it. Only then are the batch's acknowledgements called,
in the order they were added, so nothing is ever marked as read before it was delivered.
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

import orjson
import requests
from sekoia_automation.constants import EVENT_BYTES_MAX_SIZE, INTAKE_PAYLOAD_BYTES_MAX_SIZE

from connectors import metrics
from connectors.retry import Backoff, parse_retry_after
from connectors.state import Journal

logger = logging.getLogger(__name__)

Ack = Callable[[], None]
LogFunction = Callable[[str, str], None]  # (message, level)

_ENVELOPE_BYTES = 1024  # room for the `{"intake_key": ..., "jsons": [...]}` around the events


@dataclass(frozen=True)
class BatchLimits:
    max_events: int = 10_000
    max_bytes: int = 4_000_000  # of raw events; escaping inside `jsons` can add a third
    max_age: float = 1.0  # seconds the oldest buffered event may wait
    in_flight: int = 2  # batches queued behind those being delivered: backpressure on the trigger
    senders: int = 2  # batches sent at once: the runtime handles one while the next is on the wire


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryAborted(Exception):
    """Stopping with a batch the runtime never confirmed: its acknowledgements are not called."""


@dataclass
class Request:
    """One HTTP call to the runtime, and what to clean up once it is no longer needed."""

    url: str
    body: bytes
    headers: dict[str, str]
    cleanup: Path | None = None


class Sink(Protocol):
    def prepare(self, events: list[bytes]) -> list[Request]: ...


def _post(session: requests.Session, request: Request, timeout: tuple[float, float]) -> None:
    try:
        response = session.post(request.url, data=request.body, headers=request.headers, timeout=timeout)
    except requests.RequestException as error:
        raise RetryableError(f"runtime unreachable: {type(error).__name__}") from None
    if response.status_code < 300:
        return
    detail = response.text[:200].replace("\n", " ")
    raise RetryableError(
        f"runtime answered HTTP {response.status_code}: {detail}",
        parse_retry_after(response.headers.get("Retry-After")),
    )


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
            return [Request(self.url, self._prefix + whole[1:] + b"}", self._headers)]
        requests_, chunk, size = [], [], 0
        for event in events:
            encoded = orjson.dumps(event.decode("utf-8"))  # each event travels as a JSON string
            if chunk and size + len(encoded) + 1 > limit:
                requests_.append(self._request(chunk))
                chunk, size = [], 0
            chunk.append(encoded)
            size += len(encoded) + 1
        if chunk:
            requests_.append(self._request(chunk))
        return requests_

    def _request(self, chunk: list[bytes]) -> Request:
        return Request(self.url, self._prefix + b",".join(chunk) + b"]}", self._headers)


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
        return [Request(self.url, body, self._headers, cleanup=directory)]


class OversizeStore:
    """Keeps events the intake would refuse (over 250,000 bytes) in a capped file, so none disappears silently."""

    def __init__(self, path: Path, cap_bytes: int = 200_000_000):
        self.journal = Journal(path)
        self.cap_bytes = cap_bytes
        self.written = path.stat().st_size if path.exists() else 0

    def keep(self, event: bytes, origin: str) -> bool:
        if self.written + len(event) > self.cap_bytes:
            return False
        self.journal.append([{"origin": origin, "bytes": len(event), "event": event.decode("utf-8", "replace")}])
        self.written += len(event) + 64
        return True


@dataclass
class _Batch:
    events: list[bytes] = field(default_factory=list)
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
    flushes or sends. After a batch that was never confirmed (stopping), no later acknowledgement runs.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        trigger: str,
        limits: BatchLimits = BatchLimits(),
        log: LogFunction | None = None,
        oversize: OversizeStore | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (10.0, 60.0),
        backoff: Callable[[], Backoff] = lambda: Backoff(base=0.5, cap=30.0),
        on_delivered: Callable[[int], None] | None = None,
    ):
        self.sink = sink
        self.trigger = trigger
        self.limits = limits
        self._log = log or (lambda message, level: logger.log(logging.getLevelName(level.upper()), message))
        self._oversize = oversize
        self._session = session or requests.Session()
        self._timeout = timeout
        self._backoff = backoff
        self._on_delivered = on_delivered
        self._lock = threading.Condition()
        self._batch = _Batch()
        self._ready: deque[_Batch] = deque()
        self._cut_count = 0  # batches cut so far: the next batch's number
        self._acked_count = 0  # batches whose acknowledgements ran (or were dropped): all below this number
        self._finished: dict[int, tuple[_Batch, bool]] = {}  # sent batches waiting for their turn to be acked
        self._ack_turn = threading.Lock()  # one thread at a time runs acknowledgements, in order
        self._closed = False
        self._abort_at: float | None = None
        self._outage_since: float | None = None
        self._failure: str | None = None
        self.delivered = 0
        self.oversize = 0
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
            for event in events:
                if len(event) > EVENT_BYTES_MAX_SIZE:
                    self._set_aside(event, origin)
                    continue
                batch = self._current()
                batch.events.append(event)
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
        """Backpressure (caller holds the lock): the producer waits while the runtime is behind."""
        while len(self._ready) > self.limits.in_flight and not self._closed:
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

    def close(self, grace: float = 30.0) -> bool:
        """Deliver what is buffered, trying for at most ``grace`` seconds, then stop the delivery thread."""
        self._abort_at = time.monotonic() + grace
        confirmed = self.drain(timeout=grace + 5)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        return confirmed

    @property
    def pending(self) -> int:
        """Batches cut and not yet acknowledged."""
        return self._cut_count - self._acked_count

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

    def _set_aside(self, event: bytes, origin: str) -> None:
        self.oversize += 1
        metrics.oversize_events.labels(self.trigger).inc()
        kept = self._oversize.keep(event, origin) if self._oversize else False
        where = f"kept in {self._oversize.journal.path}" if kept else "not kept (oversize file full or disabled)"
        self._log(
            f"Event of {len(event)} bytes from {origin or 'unknown origin'} is over the intake limit of "
            f"{EVENT_BYTES_MAX_SIZE} bytes and was not sent; {where}",
            "warning",
        )

    # -- delivery thread -----------------------------------------------------------------------------------

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
                if self._failure is None:
                    self._run_acks(batch)
                with self._lock:
                    self._acked_count += 1
                    metrics.pending_batches.labels(self.trigger).set(self.pending)
                    self._lock.notify_all()

    def _deliver(self, batch: _Batch) -> bool:
        """Send one batch until the runtime confirms it; False when stopping cut the retries short."""
        started = time.monotonic()
        requests_: list[Request] = []
        try:
            if batch.events:
                requests_ = self.sink.prepare(batch.events)
                for request in requests_:
                    self._send_until_confirmed(request)
        except DeliveryAborted as aborted:
            self._failure = str(aborted)
            metrics.delivery_batches.labels(self.trigger, "aborted").inc()
            self._log(
                f"Stopped before the runtime confirmed {len(batch.events)} events: they were not marked as read "
                "and will be collected again at the next start",
                "warning",
            )
            return False
        finally:
            for request in requests_:
                if request.cleanup is not None:
                    shutil.rmtree(request.cleanup, ignore_errors=True)
        count = len(batch.events)
        if count:
            with self._lock:
                self.delivered += count
            metrics.delivered_events.labels(self.trigger).inc(count)
            metrics.delivery_batches.labels(self.trigger, "confirmed").inc()
            metrics.delivery_seconds.labels(self.trigger).observe(time.monotonic() - started)
            if self._on_delivered:
                self._on_delivered(count)
        return True

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
            try:
                _post(self._session, request, self._timeout)
                self._outage_ended()
                return
            except RetryableError as error:
                metrics.delivery_retries.labels(self.trigger).inc()
                self._outage_began(error)
                delay = backoff.next_delay(error.retry_after)
                if self._abort_at is not None and time.monotonic() + delay > self._abort_at:
                    raise DeliveryAborted(str(error)) from None
                time.sleep(delay)

    # One warning when the runtime stops answering and one line when it is back, whatever the number of
    # senders, batches and attempts in between.

    def _outage_began(self, error: RetryableError) -> None:
        with self._lock:
            if self._outage_since is not None:
                return
            self._outage_since = time.monotonic()
        self._log(f"Delivery to the runtime failed, retrying until it succeeds: {error}", "warning")

    def _outage_ended(self) -> None:
        with self._lock:
            if self._outage_since is None:
                return
            lasted, self._outage_since = time.monotonic() - self._outage_since, None
        self._log(f"Runtime reachable again after {lasted:.0f}s; delivery resumed", "info")
