"""One run of the consumer: a long-lived ``EventHubConsumerClient.receive_batch`` feeding the forwarder.

Threads and loop:
- The event loop runs the client (every owned partition concurrently), the checkpoint writer and a monitor.
- Each received batch is split into records and handed to the forwarder on ONE worker thread: splitting is
  CPU work and ``Forwarder.add`` may block for backpressure, neither belongs on the loop. The partition's
  callback awaits its batch, so a slow runtime slows the reading instead of filling memory.
- The forwarder's delivery thread calls the batch's ack once the runtime confirmed it; the ack hands the
  position to the checkpoint writer, which writes it from the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from azure.eventhub import EventData
from azure.eventhub.amqp import AmqpMessageBodyType
from azure.eventhub.aio import EventHubConsumerClient
from azure.eventhub.exceptions import OwnershipLostError

from azure_eventhub import metrics
from azure_eventhub.checkpoints import CheckpointWriter, describe_error
from azure_eventhub.clients import consumer_group_error, credential_error, is_auth_error, is_not_found
from azure_eventhub.config import EventHubConfiguration, parse_starting_position
from azure_eventhub.records import RecordSplitter, SplitStats
from connectors.delivery import Forwarder
from connectors.errors import ConfigurationError

LogFunction = Callable[[str, str], None]
_DATA = AmqpMessageBodyType.DATA


def event_body(event: EventData) -> bytes:
    if event.body_type is _DATA:
        return b"".join(event.body)
    return event.body_as_str().encode("utf-8")  # AMQP value / sequence bodies, rare: their text form


@dataclass
class Progress:
    """Last event handed to the forwarder for a partition (for backlog and lag)."""

    sequence_number: int
    enqueued_time: datetime | None
    seen_at: float


@dataclass
class Settings:
    stop_grace: float = 25.0  # seconds to deliver and checkpoint what was read, once asked to stop
    backlog_interval: float = 30.0  # partition properties are read this often, not per event
    text_warning_interval: float = 600.0


class Consumer:
    def __init__(
        self,
        config: EventHubConfiguration,
        client: EventHubConsumerClient,
        writer: CheckpointWriter,
        forwarder: Forwarder,
        splitter: RecordSplitter,
        log: LogFunction,
        stop_requested: asyncio.Event,
        is_running: Callable[[], bool],
        heartbeat: Callable[[], None],
        lag: Callable[[float], None],
        settings: Settings | None = None,
    ):
        self.config = config
        self.client = client
        self.writer = writer
        self.forwarder = forwarder
        self.splitter = splitter
        self.log = log
        self.stop_requested = stop_requested
        self.is_running = is_running
        self.heartbeat = heartbeat
        self.report_lag = lag
        self.settings = settings or Settings()
        self.loop = asyncio.get_running_loop()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="eventhub-records")
        self.accepting = True
        self.fatal: ConfigurationError | None = None
        self.owned: set[str] = set()
        self.progress: dict[str, Progress] = {}
        self.stats = SplitStats()  # written by the worker thread only
        self._reported = SplitStats()
        self._text_warned_at = 0.0
        self._error_streaks: dict[str, int] = {}

    # -- run ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        writer_task = asyncio.create_task(self.writer.run(), name="eventhub-checkpoints")
        monitor_task = asyncio.create_task(self._monitor(), name="eventhub-monitor")
        receive_task = asyncio.create_task(
            self.client.receive_batch(
                self._on_batch,
                max_batch_size=self.config.max_batch_size,
                starting_position=parse_starting_position(self.config.starting_position),
                on_error=self._on_error,
                on_partition_initialize=self._on_partition_initialize,
                on_partition_close=self._on_partition_close,
            ),
            name="eventhub-receive",
        )
        stop_task = asyncio.create_task(self.stop_requested.wait())
        try:
            await asyncio.wait({receive_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            await self._finish()
            await self.client.close()  # cancels the partitions and releases their ownership
            if receive_task.done() and not receive_task.cancelled() and receive_task.exception() and not self.fatal:
                raise receive_task.exception()  # type: ignore[misc]
        finally:
            for task in (writer_task, monitor_task, stop_task, receive_task):
                task.cancel()
            await asyncio.gather(writer_task, monitor_task, stop_task, receive_task, return_exceptions=True)
            self.worker.shutdown(wait=False)
            metrics.owned_partitions.set(0)
        if self.fatal:
            raise self.fatal

    async def _finish(self) -> None:
        """Stop taking batches, deliver what was read, write its checkpoints; the partitions are still ours."""
        self.accepting = False
        grace = self.settings.stop_grace
        # On the worker, so it runs after any batch being added: nothing can slip in after the drain.
        delivered = await self.loop.run_in_executor(self.worker, self.forwarder.drain, grace)
        saved = await self.writer.flush(min(10.0, grace))
        if not delivered:
            self.log("Stopping before the runtime confirmed every record: those not confirmed are read again at "
                     "the next start", "warning")
        elif not saved:
            self.log("Stopping before the last checkpoints were saved: the last records delivered may be read and "
                     "sent again at the next start", "warning")

    # -- client callbacks (event loop) ------------------------------------------------------------------------

    async def _on_batch(self, context, events: list[EventData]) -> None:
        if events and self.accepting:
            await self.loop.run_in_executor(self.worker, self._forward, context.partition_id, events)

    def _forward(self, partition_id: str, events: list[EventData]) -> None:
        """Worker thread: split the batch into records and queue them with the partition's ack."""
        if not self.accepting:
            return  # stopping: not acknowledged, so read again at the next start
        records: list[bytes] = []
        before = self.stats.records
        self.splitter.split(map(event_body, events), records, self.stats)
        last = events[-1]
        sequence_number = last.sequence_number
        self.progress[partition_id] = Progress(sequence_number, last.enqueued_time, time.time())
        ack = partial(self._acked, partition_id, last.offset, sequence_number, len(events), self.stats.records - before)
        self.forwarder.add(records, ack=ack, origin=f"partition {partition_id} up to sequence number {sequence_number}")

    def _acked(self, partition_id: str, offset: str, sequence_number: int, events: int, records: int) -> None:
        """Delivery thread: the runtime confirmed the batch and everything queued before it."""
        metrics.events_forwarded.inc(events)
        metrics.records_forwarded.inc(records)
        self.writer.confirmed(partition_id, offset, sequence_number)

    async def _on_partition_initialize(self, context) -> None:
        self.owned.add(context.partition_id)
        metrics.owned_partitions.set(len(self.owned))
        self.log(f"Reading partition {context.partition_id} of event hub {self.config.hub_name}", "info")

    async def _on_partition_close(self, context, reason) -> None:
        partition_id = context.partition_id
        self.owned.discard(partition_id)
        metrics.owned_partitions.set(len(self.owned))
        self.progress.pop(partition_id, None)
        for gauge in (metrics.backlog, metrics.lag_seconds):
            try:
                gauge.remove(partition_id)
            except KeyError:
                pass
        if self.accepting:
            self.log(f"Stopped reading partition {partition_id} ({getattr(reason, 'name', reason)}); another "
                     "consumer or the next load-balancing round takes it from its last checkpoint", "info")

    async def _on_error(self, context, error: Exception) -> None:
        partition_id = getattr(context, "partition_id", None)
        if is_auth_error(error):
            self._fail(credential_error(self.config, error), "auth")
            return
        if partition_id is not None and is_not_found(error):
            # The hub answered the start-up probe: a receiver refused as not found is the consumer group.
            self._fail(consumer_group_error(self.config), "consumer_group")
            return
        if isinstance(error, OwnershipLostError) or "stolen" in str(error).lower():
            metrics.receive_errors.labels("ownership_lost").inc()
            return  # load balancing at work: logged when the partition closes
        where = f"partition {partition_id}" if partition_id is not None else "load balancing (checkpoint store)"
        kind = "partition" if partition_id is not None else "load_balancing"
        metrics.receive_errors.labels(kind).inc()
        streak = self._error_streaks.get(where, 0)
        self._error_streaks[where] = streak + 1
        if streak == 0 or streak % 20 == 0:  # once per outage, then a reminder now and then, never per event
            self.log(f"Event Hubs {where}: {describe_error(error)}; the client retries by itself "
                     f"({streak + 1} errors so far)", "warning")

    def _fail(self, error: ConfigurationError, kind: str) -> None:
        metrics.receive_errors.labels(kind).inc()
        if self.fatal is None:
            self.fatal = error
            self.stop_requested.set()

    # -- monitor ----------------------------------------------------------------------------------------------

    async def _monitor(self) -> None:
        next_backlog = 0.0
        while True:
            await asyncio.sleep(1.0)
            self.heartbeat()
            if not self.is_running():
                self.stop_requested.set()  # in case the stop signal came before the loop listened
            self._report_stats()
            if self.owned and time.monotonic() >= next_backlog:
                next_backlog = time.monotonic() + self.settings.backlog_interval
                try:
                    await self._refresh_backlog()
                except Exception:  # noqa: BLE001 - a metric must not stop the consumer; the gauges keep their value
                    metrics.receive_errors.labels("properties").inc()

    async def _refresh_backlog(self) -> None:
        checkpoints: dict[str, int] | None = None
        worst_lag = 0.0
        for partition_id in sorted(self.owned):
            properties = await asyncio.wait_for(self.client.get_partition_properties(partition_id), 15)
            last_enqueued = properties["last_enqueued_sequence_number"]
            progress = self.progress.get(partition_id)
            if progress is not None:
                processed = progress.sequence_number
            else:
                if checkpoints is None:
                    checkpoints = await self._checkpoints()
                processed = checkpoints.get(partition_id, properties["beginning_sequence_number"] - 1)
            behind = 0 if properties.get("is_empty") else max(0, last_enqueued - processed)
            metrics.backlog.labels(partition_id).set(behind)
            lag = 0.0
            if behind and progress is not None and progress.enqueued_time is not None:
                lag = max(0.0, (datetime.now(UTC) - progress.enqueued_time).total_seconds())
            elif behind and properties.get("last_enqueued_time_utc"):
                lag = max(0.0, (datetime.now(UTC) - properties["last_enqueued_time_utc"]).total_seconds())
            metrics.lag_seconds.labels(partition_id).set(lag)
            worst_lag = max(worst_lag, lag)
        self.report_lag(worst_lag)

    async def _checkpoints(self) -> dict[str, int]:
        store = self.writer.store
        base = self.writer.base
        listed = await asyncio.wait_for(
            store.list_checkpoints(base["fully_qualified_namespace"], base["eventhub_name"], base["consumer_group"]),
            15,
        )
        return {item["partition_id"]: int(item["sequence_number"]) for item in listed}

    def _report_stats(self) -> None:
        stats, reported = self.stats, self._reported
        for reason in ("empty", "heartbeats", "filtered"):
            delta = getattr(stats, reason) - getattr(reported, reason)
            if delta:
                metrics.bodies_skipped.labels(reason.rstrip("s") if reason == "heartbeats" else reason).inc(delta)
                setattr(reported, reason, getattr(reported, reason) + delta)
        text = stats.text - reported.text
        invalid = stats.invalid_utf8 - reported.invalid_utf8
        if text:
            metrics.text_bodies.labels("invalid_utf8").inc(invalid)
            metrics.text_bodies.labels("utf8").inc(text - invalid)
            reported.text += text
            reported.invalid_utf8 += invalid
            now = time.monotonic()
            if now - self._text_warned_at >= self.settings.text_warning_interval or not self._text_warned_at:
                self._text_warned_at = now
                self.log(
                    f"{stats.text} message bodies so far were not JSON ({stats.invalid_utf8} not even UTF-8) and "
                    "were forwarded as text: a producer of this event hub sends something other than diagnostic "
                    "records", "warning",
                )


def describe_store(config: EventHubConfiguration, store: Any) -> str:
    if config.uses_storage:
        return f"container `{config.storage_container_name}` of the storage account"
    return f"the local state store {getattr(getattr(store, 'file', None), 'path', '?')} (one instance only)"
