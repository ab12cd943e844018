"""The ``Forwarder``: what a trigger holds. It wires the roles of delivery together (see the package's docstring),
runs the sender tasks, and ends delivery at a stop."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable

import aiohttp

from connectors import metrics
from connectors.delivery.acks import Ack, OrderedAcks
from connectors.delivery.batches import Batch, Batches, BatchLimits
from connectors.delivery.control import STOP_GRACE_SECONDS, Control, DeliveryAborted, LogFunction, log_to_logger
from connectors.delivery.oversize import Oversize
from connectors.delivery.refusals import Refusals, SetAside
from connectors.delivery.transport import UNEXPECTED, Transport, sender_name
from connectors.errors import ConfigurationError
from connectors.progress import StallWatch
from connectors.retry import Backoff, RetryOn, retrying
from connectors.setaside import SetAsideStore
from connectors.sinks import Misdirected, Sink

logger = logging.getLogger(__name__)


class DeliveryBroken(ConfigurationError):
    """A sender task or the age timer ended on an unexpected error (a bug): delivery would stall silently behind
    the heartbeats, so the trigger is told to stop (a restart starts delivery afresh from the last checkpoints)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)
        self.field = "delivery"
        self.expected = message


class Forwarder:
    """Buffers events, delivers them in batches from sender tasks on the trigger's event loop, and acknowledges
    after the runtime confirmed, in the order the events were added (``connectors.delivery.acks``).

    Everything runs on the one loop the forwarder was made on (construct it inside the trigger's ``run_async``),
    so its state needs no lock; only ``stopping`` may be called from elsewhere (a signal handler, another thread).
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
            loop = asyncio.get_running_loop()  # the senders are its tasks
        except RuntimeError:
            raise RuntimeError("a Forwarder is made on the trigger's event loop (inside run_async)") from None
        self.sink = sink
        self.trigger = trigger
        self.limits = limits
        self._log = log or log_to_logger
        self._on_delivered = on_delivered
        self.control = Control(loop, self._log, backoff, on_fatal)
        self.acks = OrderedAcks(self.control, trigger=trigger)
        self.batches = Batches(self.control, self.acks, limits, idle_flush=idle_flush, broken=self._broken)
        self.transport = Transport(sink, self.control, trigger=trigger, connections=limits.senders,
                                   timeout=timeout, progress=progress, session=session)
        self._set_aside = SetAside(set_aside)
        self.refusals = Refusals(self.transport, self.control, self._set_aside, trigger=trigger)
        self.oversize = Oversize(self._set_aside, self._log, trigger=trigger)
        self._closing: asyncio.Task[bool] | None = None
        self._abort_told = False
        self._senders = [loop.create_task(self._sender(f"sender {n}"), name=f"deliver-{trigger}-{n}")
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
        control = self.control
        if control.failure is not None or control.closed:
            return 0
        fitted = await self.oversize.fit(events, origin)
        if control.failure is not None or control.closed:
            return 0
        return await self.batches.add(fitted, ack, origin)

    def flush(self) -> None:
        """Queue the current buffer for delivery now (acknowledgements alone are queued too)."""
        self.batches.cut()

    async def drain(self, timeout: float | None = None) -> bool:
        """Flush and wait until every queued batch was confirmed (or aborted). True when all were confirmed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.batches.cut()
        while self.acks.pending:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await self.control.wait_change(remaining)
        return self.control.failure is None

    # -- stopping ------------------------------------------------------------------------------------------

    def stopping(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """The trigger was asked to stop: delivery gets ``grace`` seconds from now, producers stop waiting for room.
        Safe from a signal handler or another thread."""
        self.control.stopping(grace)

    @property
    def is_stopping(self) -> bool:
        """``stopping`` was called: a producer adds nothing more it can leave to the next start."""
        return self.control.abort_at is not None

    async def close(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        """Deliver what is buffered until the stop deadline (``grace`` from now, or sooner if ``stopping`` set
        one), then cancel the senders, even one in the middle of an HTTP call, and close the connections: returns by
        that deadline whatever the runtime does. True when every batch was confirmed; batches not confirmed by
        then are never acknowledged. Idempotent: a second call waits for the first's result."""
        if self._closing is None:
            self._closing = self.control.loop.create_task(self._close(grace))
        return await asyncio.shield(self._closing)

    async def _close(self, grace: float) -> bool:
        control = self.control
        control.stopping(grace)
        deadline = control.abort_at or time.monotonic()
        # Producers released by the stop may still add (what they held while waiting for room, with its ack) after
        # a drain cut the buffer: cut and drain again until nothing is left, or the deadline passed.
        while True:
            confirmed = await self.drain(timeout=max(0.0, deadline - time.monotonic()))
            if not confirmed or not self.batches.buffer:
                break
        # From the check above to here nothing awaits: no producer adds in between.
        confirmed = confirmed and not self.batches.buffer
        control.closed = True
        self.batches.close()  # left over at the deadline: never sent, its acks never run
        if self.acks.pending:
            control.failure = control.failure or "stopped before the runtime confirmed every batch"
            self._aborted()
        control.notify()
        for task in self._senders:
            task.cancel()  # one stuck in an HTTP call included: its batch is not acknowledged
        await asyncio.gather(*self._senders, return_exceptions=True)
        self.batches.ready.clear()
        self.acks.drop_rest()
        await self.transport.close()
        return confirmed

    # -- what the trigger reads ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Batches cut and not yet acknowledged."""
        return self.acks.pending

    @property
    def fatal_error(self) -> ConfigurationError | None:
        return self.control.fatal_error

    @property
    def shortened(self) -> int:
        return self.oversize.shortened + self.refusals.shortened

    @property
    def refused(self) -> int:
        return self.refusals.refused

    @property
    def set_aside(self) -> SetAsideStore | None:
        """Where the full events that were shortened or refused are kept."""
        return self._set_aside.store

    @property
    def outage_seconds(self) -> float | None:
        """How long delivery has been failing, the runtime unreachable or an unexpected error (None: it works)."""
        return self.transport.outage_seconds

    def renew_connections(self) -> None:
        """A stall: the connections to the runtime are replaced (``Transport.renew_connections``)."""
        self.transport.renew_connections()

    # -- sender tasks --------------------------------------------------------------------------------------

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        """A sender ends only once closed (returned, or cancelled by close); any other end is a bug."""
        if task.cancelled() or self.control.closed:
            return
        error = task.exception()
        self._broken(f"sender {task.get_name()}", error or RuntimeError("returned before close"))

    def _broken(self, what: str, error: BaseException) -> None:
        """Delivery cannot go on: producers are released (add takes nothing more), nothing more is acknowledged,
        and the trigger is told to stop rather than stall behind its heartbeats."""
        logger.error("Delivery stopped: %s failed", what, exc_info=error)
        self.control.fail(DeliveryBroken(f"Delivery stopped on an unexpected error in {what} ({error!r}): nothing "
                                         "more is sent or marked as read; the trigger stops, and what was not "
                                         "confirmed is collected again at the next start"))

    async def _sender(self, name: str) -> None:
        sender_name.set(name)
        while True:
            batch = await self.batches.next_batch()
            if batch is None:
                return
            confirmed = False
            try:
                confirmed = await self._deliver(batch)
            finally:  # whatever happened (cancelled by close too), the batch takes its turn: later ones never wait
                self.acks.finished(batch, confirmed)

    async def _deliver(self, batch: Batch) -> bool:
        """Send one batch until every event was confirmed or set aside; False when it was not (then nothing
        later is sent either). An unexpected error is retried with backoff and counts as an outage: delivery never
        stops silently behind the heartbeats."""
        started = time.monotonic()
        try:
            # Any error ``_send`` lets through is unexpected (a bug): it must not end the sender.
            outcome = await retrying(functools.partial(self._send, batch), RetryOn(Exception),
                                     backoff=self.control.backoff, pause=self.control.pause,
                                     on_failure=self._failed_unexpectedly)
        except DeliveryAborted:  # stopping leaves no time for another attempt
            return False
        if isinstance(outcome, DeliveryAborted):
            metrics.delivery_batches.labels(self.trigger, "aborted").inc()
            self._aborted()
            return False
        if isinstance(outcome, Misdirected):
            self.control.fail(self.sink.configuration_error(outcome))
            return False
        if outcome is None:
            return False
        count = len(batch.events) - outcome
        if count:
            metrics.delivered_events.labels(self.trigger).inc(count)
            metrics.delivery_batches.labels(self.trigger, "confirmed").inc()
            metrics.delivery_seconds.labels(self.trigger).observe(time.monotonic() - started)
            if self._on_delivered:
                try:
                    self._on_delivered(count)
                except Exception as error:  # noqa: BLE001 - counting must not undo a delivery
                    self._log(f"Counting {count} delivered events failed ({error!r})", "error")
        return True

    async def _send(self, batch: Batch) -> int | DeliveryAborted | Misdirected | None:
        """One attempt: how many events were refused (and set aside), else why the batch goes no further (aborted,
        misdirected; None: delivery failed meanwhile). The caller handles the latter outside the retries: an error
        there is a bug that ends the sender."""
        if self.control.failure is not None:
            return None
        try:
            refused = await self.refusals.send(batch.events, batch.origins)
        except (DeliveryAborted, Misdirected) as ended:
            return ended
        self.transport.outage.ended("Delivery works again", key=UNEXPECTED)
        return refused

    def _failed_unexpectedly(self, error: BaseException, failures: int) -> None:
        self.transport.outage.began(f"Delivery failed unexpectedly ({error!r}); retrying the batch (some of its "
                                    "events may be sent twice)", "error", key=UNEXPECTED)

    def _aborted(self) -> None:
        """One line per stop, however many batches were left unconfirmed (none after a configuration error)."""
        if not self._abort_told and self.control.fatal_error is None:
            self._abort_told = True
            self._log("Stopped before the runtime confirmed every event: those not confirmed were not "
                      "marked as read and will be collected again at the next start", "warning")
