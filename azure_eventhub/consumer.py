"""One run of the consumer: a long-lived ``EventHubConsumerClient.receive_batch`` feeding the forwarder.

Everything runs on the trigger's one event loop: the client (every owned partition concurrently), the
forwarder's senders, the checkpoint writer, the heartbeat and a monitor (partition properties: backlog, lag, what
the trigger's stall watch compares with, checkpoints past the end of their partition, the time until loss).
- A received batch is split into records and handed to the forwarder in the partition's callback: awaiting
  ``Forwarder.add`` is the backpressure, so a slow runtime slows the reading instead of filling memory.
- The forwarder calls the batch's ack, on the loop, once the runtime confirmed it and everything added before;
  the ack hands the position to the checkpoint writer, which writes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from azure.eventhub import EventData
from azure.eventhub.amqp import AmqpMessageBodyType
from azure.eventhub.aio import EventHubConsumerClient
from azure.eventhub.exceptions import OwnershipLostError

from azure_eventhub import metrics
from azure_eventhub.checkpoints import CheckpointWriter
from azure_eventhub.clients import (
    close_before,
    consumer_group_error,
    credential_error,
    is_auth_error,
    is_not_found,
)
from azure_eventhub.config import EventHubConfiguration, parse_starting_position
from azure_eventhub.eventhub_internals import client_owner_id, forget_delivery_tags, reopen_partition
from azure_eventhub.partitions import EARLIEST, PartitionWatch, PastTheEnd, beyond, past_the_end
from azure_eventhub.records import RecordSplitter, SplitStats
from connectors.delivery import STOP_GRACE_SECONDS, Forwarder
from connectors.errors import ConfigurationError
from connectors.logs import LogFunction, OnceLogger, describe_error
from connectors.progress import StallWatch
from connectors.state import StateFile

_DATA = AmqpMessageBodyType.DATA
# Once asked to stop: delivery gets its grace period, then the last checkpoints and the closing of the client,
# the store and the credential share this much more (with the 8 s grace: done within 13 s of SIGTERM).
STOP_AFTER_GRACE = 5.0
CLOSING_TIME = 2.0  # of which the closing keeps at least this
# A received batch (up to max_batch_size messages, each an envelope of many records) goes to the forwarder in
# slices of about this many records, each with the position of its last message: a checkpoint follows delivery
# slice by slice, so a crash re-reads what was not confirmed, not the rest of a whole batch of thousands.
ACK_RECORDS = 200
EXPIRY_CHECK_TIMEOUT = 3.0  # the first batch of a reading waits this long at most for its checkpoint (a check only)
LOSS_WINDOW = 600.0  # seconds of partition readings the time until loss is estimated over
OWNER_ID_DEADLINE = 10.0  # seconds after the start: the client's processor has its id within the first loop steps
# What the stall watch does, mildest first (``Consumer._recover``): the partition's receiver closed (the processor
# opens it again from its checkpoint at its next load-balancing round, on a new connection), then the run
# restarted (a new client: every connection, the processor and its load balancing made again).
RECOVERY_STEPS = ("reopening its receiver", "restarting the run with a new client")


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
    stop_grace: float = STOP_GRACE_SECONDS  # to deliver and checkpoint what was read, once asked to stop
    backlog_interval: float = 30.0  # partition properties are read this often, not per event
    partition_check_interval: float = 10.0  # the hub's partition list: new ones are claimed within a minute
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
        owner_file: StateFile | None = None,
        partition_ids: list[str] | None = None,  # the hub's partitions, if just read (not listed again)
        watch: StallWatch | None = None,  # the trigger's watch of its partitions (it outlives this run)
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
        self.owner_file = owner_file
        self.partition_ids = partition_ids
        self.loop = asyncio.get_running_loop()
        self.accepting = True
        self.fatal: ConfigurationError | None = None
        self.owned: set[str] = set()
        self.readings: dict[str, int] = {}  # partition -> token of this instance's reading (its acks carry it)
        self.partitions = PartitionWatch(client, writer.store, writer.base,
                                         parse_starting_position(config.starting_position), log)
        self.progress: dict[str, Progress] = {}
        # Partitions started at `latest` (or at a time after their last event), nothing read or checkpointed yet:
        # the last sequence number they held when first seen, before which nothing is owed.
        self._unread_from: dict[str, int] = {}
        self.stats = SplitStats()  # totals, for metrics and warnings
        self._reported = SplitStats()
        self._text_bodies = OnceLogger(log, remind_every=self.settings.text_warning_interval)
        self._skips_told: set[str] = set()
        # Once per outage (two quiet minutes end one), then a reminder every ten minutes, never per event.
        self._errors = OnceLogger(log, remind_every=600.0, forget_after=120.0)
        self._owner_saved = False
        self._told_no_owner = False
        self.stop_deadline: float | None = None  # event loop time by which stopping ends (set once stopping)
        self.watch = watch
        if watch is not None:
            watch.recover = self._recover
            # A reopened receiver reads again at the processor's next load-balancing round (interval + 20% jitter).
            watch.step_seconds = max(watch.stall_seconds, 1.2 * config.load_balancing_interval + 10)
        self._waiting_room: set[str] = set()  # partitions whose batch waits for room in the forwarder
        self._reopening: set[str] = set()  # partitions closed by a recovery step: the watch keeps its clock
        self._troubled: set[str] = set()  # partitions closed after an error: same
        self._starting_over: set[str] = set()  # checkpoints replaced by the beginning, until the partition reopens
        # Partitions closed but still watched, and when: a previous run's too (its stalls go on in this one).
        self._closed_at: dict[str, float] = dict.fromkeys(watch.readings() if watch else (), time.monotonic())
        self._restart = asyncio.Event()  # the last recovery step: this run ends, the trigger starts another
        self._monitor_errors = OnceLogger(log, remind_every=600.0)
        # partition -> (when, first retained sequence number, last read) at each properties reading
        self._fronts: dict[str, deque[tuple[float, int, int]]] = {}

    # -- run ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        _, starting_positions, _ = await asyncio.gather(self._release_previous_owner(),
                                                        self.partitions.starting_positions(self.partition_ids),
                                                        self._check_checkpoints())
        writer_task = asyncio.create_task(self.writer.run(), name="eventhub-checkpoints")
        # The heartbeat beats from a task of its own: the monitor's requests may each wait 15 s.
        beat_task = asyncio.create_task(self._beat(), name="eventhub-heartbeat")
        monitor_task = asyncio.create_task(self._monitor(), name="eventhub-monitor")
        receive_task = asyncio.create_task(
            self.client.receive_batch(
                self._on_batch,
                max_batch_size=self.config.max_batch_size,
                starting_position=starting_positions,
                on_error=self._on_error,
                on_partition_initialize=self._on_partition_initialize,
                on_partition_close=self._on_partition_close,
            ),
            name="eventhub-receive",
        )
        stop_task = asyncio.create_task(self.stop_requested.wait())
        restart_task = asyncio.create_task(self._restart.wait())
        try:
            for _ in range(100):  # the processor exists after the receive task's first step: save its id early
                await asyncio.sleep(0.01)
                await self._remember_owner()
                if self._owner_saved or self.owner_file is None or receive_task.done():
                    break
            # These never end on their own: if one dies, the run fails (and is restarted) rather than reading on
            # without checkpoints, or without heartbeats and partition checks.
            long_lived = {writer_task: "checkpoint writer", monitor_task: "monitor", beat_task: "heartbeat"}
            await asyncio.wait({receive_task, stop_task, restart_task, *long_lived},
                               return_when=asyncio.FIRST_COMPLETED)
            died = next((task for task in long_lived if task.done()), None)
            if restart_task.done() and died is None and not stop_task.done():
                self.log("Restarting the Event Hubs run with a new client: what was read is delivered and "
                         "checkpointed first", "warning")
            await self._finish()
            # Cancels the partitions and releases their ownership (other instances take them at once).
            await close_before([self.client], self.stop_deadline)
            if not self.fatal:
                if died is not None:
                    raise self._died(long_lived[died], died)
                if receive_task.done() and not receive_task.cancelled() and receive_task.exception():
                    raise receive_task.exception()  # type: ignore[misc]
        finally:
            tasks = (writer_task, monitor_task, beat_task, stop_task, restart_task, receive_task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            metrics.owned_partitions.set(0)
            if self.watch is not None:
                self.watch.recover = lambda name, index: None  # this run's client is closed
        if self.fatal:
            raise self.fatal

    def _died(self, what: str, task: asyncio.Task) -> BaseException:
        """The error that ends the run after one of its long-lived tasks ended, said in the log."""
        error = None if task.cancelled() else task.exception()
        self.log(f"The Event Hubs {what} stopped ({describe_error(error) if error else 'it ended'}): this run ends "
                 "and the trigger starts another, so that checkpoints are saved and the run is watched again",
                 "error")
        return error if error is not None else RuntimeError(f"the Event Hubs {what} ended")

    async def _finish(self) -> None:
        """Stop taking batches, deliver what was read, write its checkpoints; the partitions are still ours."""
        self.accepting = False
        grace = self.settings.stop_grace
        self.stop_deadline = self.loop.time() + grace + STOP_AFTER_GRACE
        # Stopping for good: close the forwarder, which gives up retrying after the grace period, so that the
        # checkpoints of what it delivered are written below (the trigger's own close then returns at once).
        # A failed run only hands over what was read: the trigger closes the forwarder after this run, its one
        # wait for delivery; acknowledgements coming after the writer stopped are not written (read again).
        # A batch still being added stops at its slice in hand (the stop ends its wait for room); the slices left
        # are read again at the next start.
        delivered = None
        if self.fatal or not self.is_running():
            delivered = await self.forwarder.close(grace)
        else:
            self.forwarder.flush()
        # Checkpoints by the stop deadline, leaving the closing its share.
        saved = await self.writer.flush(max(1.0, self.stop_deadline - CLOSING_TIME - self.loop.time()))
        # Records the runtime did not confirm are reported by the forwarder itself.
        if delivered and not saved:
            self.log("Stopping before the last checkpoints were saved: the last records delivered may be read and "
                     "sent again at the next start", "warning")

    # -- client callbacks (event loop) ------------------------------------------------------------------------

    async def _on_batch(self, context, events: list[EventData]) -> None:
        """Split a batch into records and queue them in slices, each with the ack of its last message; returns once
        the forwarder has room."""
        if not events or not self.accepting:
            return  # stopping: not acknowledged, so read again at the next start
        partition_id = context.partition_id
        forget_delivery_tags(self.client, partition_id)  # kept by the receiver for a settling that never comes
        # Taken before waiting for room: if the partition closes meanwhile, the ack keeps the old token (dropped).
        reading = self.readings.get(partition_id, 0)  # 0: no reading, its ack is dropped
        bodies = [event_body(event) for event in events]
        records: list[bytes] = []
        stats = SplitStats()
        slices = []  # (messages up to, records up to): where an ack can follow delivery within the batch
        try:
            for index, body in enumerate(bodies, 1):
                self.splitter.split((body,), records, stats)
                if len(records) - (slices[-1][1] if slices else 0) >= ACK_RECORDS or index == len(bodies):
                    slices.append((index, len(records)))
        except Exception as error:  # noqa: BLE001 - a body must never stop a partition (it would be read again)
            records, stats = [], SplitStats()
            self.splitter.as_text(bodies, records, stats)
            slices = [(len(bodies), len(records))]
            self.log(f"Splitting a batch of partition {partition_id} failed ({type(error).__name__}): its "
                     f"{len(bodies)} messages were forwarded as text", "error")
        last = events[-1]
        sequence_number = last.sequence_number
        await self._check_expired(partition_id, events[0].sequence_number)
        self.progress[partition_id] = Progress(sequence_number, last.enqueued_time, time.time())
        self.stats.add(stats)
        text, invalid = self.stats.text, self.stats.invalid_utf8
        first_skips = [reason for reason in SKIP_NOTES if getattr(stats, reason) and reason not in self._skips_told]
        self._skips_told.update(first_skips)
        for reason in first_skips:  # once per process: skipping is expected, the metric counts the rest
            self.log(SKIP_NOTES[reason], "info")
        if stats.text:  # said at the first one, then every text_warning_interval
            self._text_bodies.began(f"{text} message bodies so far were not JSON ({invalid} not even UTF-8) and were "
                                    "forwarded as text: a producer of this event hub sends something other than "
                                    "diagnostic records")
        if self.watch is not None:
            self.watch.progressed(partition_id)
        # Waiting for room is delivery's stall, not the partition's: the forwarder reports it.
        self._waiting_room.add(partition_id)
        try:
            done = (0, 0)
            for messages, upto in slices:
                if self.forwarder.is_stopping or not self.accepting:
                    break  # stopping: the slices left are not acknowledged, so read again at the next start
                event = events[messages - 1]
                ack = partial(self._acked, partition_id, reading, event.offset, event.sequence_number,
                              messages - done[0], upto - done[1])
                await self.forwarder.add(records[done[1]:upto], ack=ack, origin=f"partition {partition_id} up to "
                                         f"sequence number {event.sequence_number}")
                done = (messages, upto)
        finally:
            self._waiting_room.discard(partition_id)

    def _acked(self, partition_id: str, reading: int, offset: str, sequence_number: int, events: int,
               records: int) -> None:
        """The runtime confirmed the batch and everything queued before it (on the loop)."""
        metrics.events_forwarded.inc(events)
        metrics.records_forwarded.inc(records)
        if self.watch is not None:
            self.watch.progressed(partition_id)
        # Dropped by the writer if the partition closed since (another instance owns it and checkpoints it).
        self.writer.confirmed(partition_id, offset, sequence_number, owner=reading)

    async def _on_partition_initialize(self, context) -> None:
        self._reopening.discard(context.partition_id)
        self._troubled.discard(context.partition_id)
        self._starting_over.discard(context.partition_id)
        self._closed_at.pop(context.partition_id, None)
        self.readings[context.partition_id] = self.writer.claimed(context.partition_id)
        self.owned.add(context.partition_id)
        metrics.owned_partitions.set(len(self.owned))
        self.log(f"Reading partition {context.partition_id} of event hub {self.config.hub_name}", "info")

    async def _on_partition_close(self, context, reason) -> None:
        partition_id = context.partition_id
        self._stop_reading(partition_id)
        self.owned.discard(partition_id)
        metrics.owned_partitions.set(len(self.owned))
        self.progress.pop(partition_id, None)
        self._fronts.pop(partition_id, None)
        # Closed by a recovery step, after an error (opened again at the next round), or as the run ends: the watch
        # keeps counting. Taken by another instance: it is no longer this instance's to watch.
        if self.watch is not None:
            if partition_id in self._reopening | self._troubled | self._starting_over or not self.accepting:
                self._closed_at[partition_id] = time.monotonic()
            else:
                self.watch.forget(partition_id)
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
        found = past_the_end(partition_id, error) if partition_id is not None else None
        if found is not None:  # the processor would open the partition at this position again, for ever
            await self._start_over(found)
            return
        if is_auth_error(error):
            self._fail(credential_error(self.config, error), "auth")
            return
        if partition_id is not None and is_not_found(error):
            # The hub answered the start-up probe: a receiver refused as not found is the consumer group.
            self._fail(consumer_group_error(self.config), "consumer_group")
            return
        if isinstance(error, OwnershipLostError) or "stolen" in str(error).lower():
            metrics.receive_errors.labels("ownership_lost").inc()
            if partition_id is not None:
                self._stop_reading(partition_id)  # now, not once the client has closed the link
            return  # load balancing at work: logged when the partition closes
        where = f"partition {partition_id}" if partition_id is not None else "load balancing (checkpoint store)"
        kind = "partition" if partition_id is not None else "load_balancing"
        metrics.receive_errors.labels(kind).inc()
        if partition_id is not None:
            self._troubled.add(partition_id)
        self._errors.began(f"Event Hubs {where}: {describe_error(error)}; the client retries by itself", key=where)

    # -- never silently stuck -----------------------------------------------------------------------------------

    def _forget_gone(self) -> None:
        """A partition closed after an error or by a recovery step that no round opened again since (another
        instance took it) is no longer this instance's to watch: its stall is not this instance's."""
        if self.watch is None:
            return
        now = time.monotonic()
        for partition_id, closed in list(self._closed_at.items()):
            if partition_id not in self.owned and now - closed > self.watch.step_seconds:
                del self._closed_at[partition_id]
                self.watch.forget(partition_id)

    def _recover(self, partition_id: str, step: int) -> None:
        """The stall watch's step (from the heartbeat, on the loop: returns at once)."""
        if step == 0:
            if reopen_partition(self.client, partition_id):
                self._reopening.add(partition_id)
            return
        self._restart.set()

    async def _check_checkpoints(self) -> None:
        """At start: checkpoints past the end of their partition are replaced by the beginning before the
        processor reads them. Best effort: a partition missed here is found when the service refuses its receiver,
        or by the monitor."""
        try:
            found = await self.partitions.past_the_end(self.partition_ids)
        except Exception as error:  # noqa: BLE001 - the monitor and the refusal catch it later
            self.log(f"Could not compare the checkpoints with the partitions at start ({describe_error(error)}); "
                     "done again while running", "warning")
            return
        for item in found:
            await self._start_over(item)

    async def _start_over(self, found: PastTheEnd, reopen: bool = False) -> None:
        """A checkpoint or a reading past the end of its partition: said once, the partition read from its
        beginning (its checkpoint replaced), what the old reading confirmed dropped (its positions belong to the
        hub that was)."""
        partition_id = found.partition_id
        if partition_id in self._starting_over:
            return
        self._starting_over.add(partition_id)
        metrics.receive_errors.labels("past_the_end").inc()
        self.log(f"Event Hubs {found.describe()}: the event hub was deleted and created again under its name, or "
                 f"failed over to another namespace. Reading partition {partition_id} from its beginning and "
                 "checkpointing from there", "warning")
        self._stop_reading(partition_id)
        try:
            await self.partitions.start_over(partition_id)
        except Exception as error:  # noqa: BLE001 - found again at the next refusal or monitor round
            self._starting_over.discard(partition_id)
            self.log(f"Could not replace the checkpoint of partition {partition_id} ({describe_error(error)}): "
                     "tried again", "error")
            return
        if reopen and reopen_partition(self.client, partition_id):
            self._reopening.add(partition_id)

    async def _check_expired(self, partition_id: str, first: int) -> None:
        """The first event of a batch comes after a gap in the partition's sequence numbers (after the last one
        read, or the checkpoint the reading started from): the events in between left the hub (its retention)
        before they were read. Said once per gap; the reading goes on."""
        progress = self.progress.get(partition_id)
        if progress is not None:
            expected = progress.sequence_number + 1
        else:  # the reading's first batch: where its checkpoint is (none: nothing was promised)
            try:
                checkpoint = (await self.partitions.checkpoints(EXPIRY_CHECK_TIMEOUT)).get(partition_id)
            except Exception:  # noqa: BLE001 - a check only: the store's outage is said by the writer
                return
            if checkpoint is None or int(checkpoint["sequence_number"]) < 0:
                return
            expected = int(checkpoint["sequence_number"]) + 1
        if first <= expected:
            return
        count = first - expected
        metrics.events_expired.labels(partition_id).inc(count)
        self.log(f"Partition {partition_id}: {count} events (sequence numbers {expected} to {first - 1}) left the "
                 "event hub (its retention) before this trigger read them: they are lost. Read faster (more "
                 "instances sharing the storage container) or raise the event hub's retention", "error")

    def _until_loss(self, partition_id: str, processed: int, properties: dict) -> float | None:
        """Seconds until the oldest event not read yet leaves the hub, None when nothing is at risk.

        The service does not say its retention over AMQP, but its partitions say their first retained sequence
        number: while the hub trims (that number moves), the trimmed front closes in on the reading at the
        difference of their paces, over the last ``LOSS_WINDOW`` seconds."""
        now = time.monotonic()
        fronts = self._fronts.setdefault(partition_id, deque())
        fronts.append((now, properties["beginning_sequence_number"], processed))
        while len(fronts) > 2 and now - fronts[1][0] >= LOSS_WINDOW:
            fronts.popleft()
        (then, begin_then, read_then), (_, begin, read) = fronts[0], fronts[-1]
        if now - then <= 0 or begin <= begin_then or properties.get("is_empty"):
            return None  # not trimming (a young hub, or a quiet one): no pace to compare
        trimmed_pace = (begin - begin_then) / (now - then)
        closing = trimmed_pace - max(0.0, (read - read_then) / (now - then))
        if closing <= 0:
            return None  # reading faster than the hub trims
        return max(0.0, (read + 1 - begin) / closing)

    def _stop_reading(self, partition_id: str) -> None:
        """Another instance reads the partition, or nobody: acks still to come for it are not checkpointed here."""
        self.readings.pop(partition_id, None)
        self.writer.forget(partition_id)

    def _fail(self, error: ConfigurationError, kind: str) -> None:
        metrics.receive_errors.labels(kind).inc()
        if self.fatal is None:
            self.fatal = error
            self.stop_requested.set()

    # -- ownership across restarts -----------------------------------------------------------------------------

    async def _release_previous_owner(self) -> None:
        """Free the partitions a crashed run of this trigger still owns in the store.

        Ownership blobs of a process killed without releasing them stay valid for six load-balancing rounds
        (3 minutes by default): a restarted trigger would wait that long before reading again. The previous
        run's owner id is kept in the state directory; its blobs, if unchanged since (etag), are released so
        the new run claims them at once. Another live instance that took them meanwhile is left alone.
        """
        if self.owner_file is None:
            return
        previous = (self.owner_file.load({}) or {}).get("owner_id")
        if not previous:
            return
        base = self.writer.base
        try:
            owned = await asyncio.wait_for(self.writer.store.list_ownership(
                base["fully_qualified_namespace"], base["eventhub_name"], base["consumer_group"]), 15)
            mine = [dict(o, owner_id="") for o in owned if o.get("owner_id") == previous]
            if mine:
                await asyncio.wait_for(self.writer.store.claim_ownership(mine), 15)
                self.log(f"Released partitions {', '.join(sorted(o['partition_id'] for o in mine))} still held by "
                         "the previous run of this trigger, to read them again at once", "info")
        except Exception as error:  # noqa: BLE001 - at worst the partitions come back when their ownership expires
            self.log(f"Could not release the previous run's partitions ({describe_error(error)}): they are read "
                     "again once their ownership expires", "warning")

    async def _remember_owner(self) -> None:
        """Tell the checkpoint writer this run's owner id (the client's processor id), and save it for the next
        start."""
        if self._owner_saved:
            return
        owner_id = client_owner_id(self.client)  # the processor's id, written in the ownership blobs
        if owner_id:
            self._owner_saved = True
            self.writer.owner_id = owner_id
            if self.owner_file is None:
                return
            try:
                # An atomic write with its fsyncs: off the loop, which carries the first reads meanwhile.
                await asyncio.to_thread(self.owner_file.save, {"owner_id": owner_id})
            except OSError as error:
                self.log(f"Could not save the owner id ({error}): after a crash, partitions resume only once their "
                         "ownership expires", "warning")

    def _tell_no_owner_id(self) -> None:
        """Said once: without the owner id, checkpoints are written without checking the partition's owner."""
        if self._owner_saved or self._told_no_owner or getattr(self.writer.store, "owner_of", None) is None:
            return
        self._told_no_owner = True
        self.log("The Event Hubs client's owner id was not found (this azure-eventhub version changed its internals): "
                 "checkpoints are written without checking who owns the partition, so after a handover the previous "
                 "owner may write an older checkpoint (records read again after a restart, none lost), and after a "
                 "crash partitions resume only once their ownership expires", "warning")

    # -- monitor ----------------------------------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.heartbeat()  # also the stall watch's check
            if not self.is_running():
                self.stop_requested.set()  # in case the stop signal came before the loop listened

    async def _monitor(self) -> None:
        next_backlog = 0.0
        next_partition_check = time.monotonic() + self.settings.partition_check_interval
        owner_deadline = time.monotonic() + OWNER_ID_DEADLINE
        # Partition properties are also what the stall watch compares with: read at least four times per stall.
        backlog_interval = self.settings.backlog_interval
        if self.watch is not None:
            backlog_interval = min(backlog_interval, self.watch.stall_seconds / 4)
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._remember_owner()
                if time.monotonic() >= owner_deadline:
                    self._tell_no_owner_id()
                self._report_stats()
                self._forget_gone()
                if time.monotonic() >= next_partition_check:
                    next_partition_check = time.monotonic() + self.settings.partition_check_interval
                    await self.partitions.check()
                if self.owned and time.monotonic() >= next_backlog:
                    next_backlog = time.monotonic() + backlog_interval
                    await self._refresh_backlog()
                self._monitor_errors.ended("The event hub's properties are read again")
            except Exception as error:  # noqa: BLE001 - said once per outage; the gauges keep their value
                metrics.receive_errors.labels("monitor").inc()
                self._monitor_errors.began(
                    f"Reading the event hub's properties failed ({describe_error(error)}): backlog, lag and stall "
                    "figures are not updated meanwhile; retrying")

    async def _refresh_backlog(self) -> None:
        worst_lag = 0.0
        owned = sorted(self.owned)
        # Where each reading is, taken before the partitions are asked: what is read while they answer may lie past
        # the last sequence number they give, which says nothing wrong.
        progress = {pid: self.progress.get(pid) for pid in owned}
        checkpoints = await self._checkpoints() if None in progress.values() else {}
        answers = await asyncio.gather(
            *(asyncio.wait_for(self.client.get_partition_properties(pid), 15) for pid in owned),
            return_exceptions=True)
        failed = None
        for partition_id, properties in zip(owned, answers):
            if isinstance(properties, BaseException):
                failed = failed or properties
                continue
            if partition_id not in self.owned:
                continue  # closed meanwhile
            last_enqueued = properties["last_enqueued_sequence_number"]
            read = progress[partition_id]
            if read is not None:
                processed = read.sequence_number
            elif partition_id in checkpoints:
                processed = checkpoints[partition_id]
            else:
                processed = self._before_first_owed(partition_id, properties)
            found = beyond(partition_id, processed, properties)
            if found is not None:  # read, or checkpointed, further than the partition holds
                await self._start_over(found, reopen=True)
                continue
            behind = 0 if properties.get("is_empty") else max(0, last_enqueued - processed)
            if self.watch is not None:
                self.watch.behind(partition_id, bool(behind) and partition_id not in self._waiting_room)
                self.watch.until_loss(partition_id, self._until_loss(partition_id, processed, properties))
            metrics.backlog.labels(partition_id).set(behind)
            lag = 0.0
            if behind and read is not None and read.enqueued_time is not None:
                lag = max(0.0, (datetime.now(UTC) - read.enqueued_time).total_seconds())
            elif behind and properties.get("last_enqueued_time_utc"):
                lag = max(0.0, (datetime.now(UTC) - properties["last_enqueued_time_utc"]).total_seconds())
            metrics.lag_seconds.labels(partition_id).set(lag)
            worst_lag = max(worst_lag, lag)
        self.report_lag(worst_lag)
        if failed is not None:
            raise failed

    def _before_first_owed(self, partition_id: str, properties: dict) -> int:
        """Nothing read nor checkpointed yet: the sequence number before the first event owed. From the beginning
        for `earliest` (and a start time the partition's events reach); for `latest` or a start time after its last
        event, what the partition held when first seen is not owed, so a quiet partition is not taken for a
        stalled one."""
        position = self.partitions.positions.get(partition_id, EARLIEST)
        last_time = properties.get("last_enqueued_time_utc")
        if position == EARLIEST or (isinstance(position, datetime) and last_time is not None and last_time >= position):
            return properties["beginning_sequence_number"] - 1
        return self._unread_from.setdefault(partition_id, properties["last_enqueued_sequence_number"])

    async def _checkpoints(self) -> dict[str, int]:
        store = self.writer.store
        base = self.writer.base
        listed = await asyncio.wait_for(
            store.list_checkpoints(base["fully_qualified_namespace"], base["eventhub_name"], base["consumer_group"]),
            15,
        )
        return {item["partition_id"]: int(item["sequence_number"]) for item in listed}

    def _report_stats(self) -> None:
        stats = self.stats
        reported = self._reported
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


SKIP_NOTES = {
    "empty": "Empty message bodies (or `null`) are skipped: counted in "
             "symphony_module_microsoft_eventhub_skipped_total{reason=\"empty\"}, not logged again",
    "heartbeats": "Envelopes with an empty `records` list (diagnostic-settings heartbeats) are skipped: counted in "
                  "symphony_module_microsoft_eventhub_skipped_total{reason=\"heartbeat\"}, not logged again",
    "repaired": "A JSON message body held bytes that are not UTF-8: its records are forwarded with each such byte "
                "written \\xNN (nothing dropped), not logged again",
}


def describe_store(config: EventHubConfiguration, store: Any) -> str:
    if config.uses_storage:
        return f"container `{config.storage_container_name}` of the storage account"
    return f"the local state store {getattr(getattr(store, 'file', None), 'path', '?')} (one instance only)"
