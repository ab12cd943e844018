"""Batching: the buffer producers fill, cut on count, bytes, age or quiet, and the cut batches waiting for a
sender. Waiting for room before a batch starts is the backpressure on the producers."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from connectors.delivery.acks import Ack, OrderedAcks
from connectors.delivery.control import Control


@dataclass(frozen=True)
class BatchLimits:
    max_events: int = 10_000
    # Of raw events; escaping inside `jsons` can add a third. Each batch is held several times over (buffered,
    # queued, encoded, on the wire), so memory follows this bound; past it, bigger requests bring no more throughput.
    max_bytes: int = 1_000_000
    max_age: float = 1.0  # seconds the oldest buffered event may wait
    in_flight: int = 2  # batches queued behind those being delivered: backpressure on the trigger
    senders: int = 2  # batches sent at once: the runtime handles one while the next is on the wire


@dataclass
class Batch:
    events: list[bytes] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # where each event came from (one shared string per add)
    acks: list[Ack] = field(default_factory=list)
    size: int = 0
    started: float = 0.0
    seq: int = 0

    def __bool__(self) -> bool:
        return bool(self.events or self.acks)


class Batches:
    def __init__(self, control: Control, acks: OrderedAcks, limits: BatchLimits, *, idle_flush: float,
                 broken: Callable[[str, BaseException], None]):
        self.control = control
        self.acks = acks
        self.limits = limits
        self._loop = control.loop
        self._broken = broken  # a timer's error: delivery cannot go on
        self.buffer = Batch()
        self.ready: deque[Batch] = deque()
        self._idle = 0  # senders waiting for a batch
        self._age_timer = None  # cuts the buffer once its oldest event is max_age old
        self._idle_flush = idle_flush  # no add for this long, the end of a burst: the buffer goes now (0: off)
        self._idle_timer = None  # cuts the buffer once no add came for idle_flush
        self._last_add = 0.0

    def _stopped_taking(self) -> bool:
        return self.control.failure is not None or self.control.closed

    async def add(self, events: Sequence[bytes], ack: Ack | None, origin: str) -> int:
        """See ``Forwarder.add``."""
        max_events, max_bytes = self.limits.max_events, self.limits.max_bytes
        added, count = 0, len(events)
        while added < count:  # whole slices at a time: the per-event work is the byte count alone
            if not self.buffer:
                # Room is waited for before a batch starts, not after it is cut: from the room seen to the cut
                # nothing awaits, so however many producers share the forwarder (one per partition), at most
                # ``in_flight`` cut batches wait, plus the one buffer.
                await self._wait_for_room()
                if self._stopped_taking():
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
                self.cut()
        if ack is not None:
            if self.buffer or not self.ready:
                self._current().acks.append(ack)
            else:  # the unit ended exactly on a batch boundary: ride with its last events
                self.ready[-1].acks.append(ack)
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
        while len(self.ready) >= room and self.control.abort_at is None and not self._stopped_taking():
            await self.control.wait_change()

    async def next_batch(self) -> Batch | None:
        """For a sender: the oldest cut batch; when none, the buffer once its oldest event is ``max_age`` old.
        None once closed."""
        while not self.ready:
            if self.control.closed:
                return None
            if self.buffer and time.monotonic() - self.buffer.started >= self.limits.max_age:
                self.cut()
                break
            self._idle += 1
            try:
                await self.control.wait_change()
            finally:
                self._idle -= 1
        batch = self.ready.popleft()
        self.control.notify()  # a producer may have room now
        return batch

    def cut(self) -> None:
        """Queue the current batch (not once closed: no sender would take it)."""
        self._drop_age_timer()
        if self.buffer and not self.control.closed:
            self.acks.number(self.buffer)
            self.ready.append(self.buffer)
            self.buffer = Batch()
            self.control.notify()

    def close(self) -> None:
        """What is left in the buffer is never sent, its acks never run; the timers end."""
        self.buffer = Batch()
        self._drop_age_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    def _current(self) -> Batch:
        """The batch to add to (call only to add to it): an empty one starts its age clock."""
        batch = self.buffer
        if not batch:
            batch.started = time.monotonic()
            self._drop_age_timer()
            self._age_timer = self._loop.call_later(self.limits.max_age, self._aged)
        return batch

    def _aged(self) -> None:
        """The oldest buffered event is ``max_age`` old: cut now if a sender waits; else the first sender to free
        up cuts it (``next_batch``), so a busy runtime gets full batches rather than more, smaller ones."""
        self._age_timer = None
        try:
            if self._idle:
                self.cut()
        except Exception as error:  # noqa: BLE001 - a timer's error would only reach the loop's handler
            self._broken("the batch age timer", error)

    def _quiet(self) -> None:
        """``idle_flush`` after an add: cut if no add came since (acknowledgements alone too: a source that went
        quiet gets its positions saved), else wait for the rest of the quiet time."""
        self._idle_timer = None
        try:
            quiet_for = self._loop.time() - self._last_add
            if quiet_for >= self._idle_flush:
                self.cut()
            elif not self.control.closed:
                self._idle_timer = self._loop.call_later(self._idle_flush - quiet_for, self._quiet)
        except Exception as error:  # noqa: BLE001 - a timer's error would only reach the loop's handler
            self._broken("the idle flush timer", error)

    def _drop_age_timer(self) -> None:
        if self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None
