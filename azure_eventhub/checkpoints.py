"""Checkpoints: the local store (no storage account configured) and the writer that follows confirmed delivery.

``LocalCheckpointStore`` keeps checkpoints in the module's durable state (``StateFile``, atomic replace) and
ownership in memory: it serves one instance only, since two processes on one file would both read every
partition. Sharing partitions between instances needs the Blob store, whose ownership blobs the client's load
balancing relies on.

Both stores also keep, beside the checkpoints, the trigger's first start: its time and the partition ids it saw
(``load_first_start`` / ``record_first_start``, a ``FirstStart``). ``latest`` means "from that time"; a partition
without a checkpoint that is not among those ids was added to the hub later, so all its events came after the
first start and it is read from its beginning.

``CheckpointWriter`` receives "delivered up to this event" from the forwarder (the ack of a batch, on the event
loop) and writes it from a task of its own: a round of writes starts as soon as an ack arrives while none is in
flight, and the acks that arrive during a round are coalesced into the next, so the store's own latency sets the
pace. Two floors bound the writes of a fast stream (each is a storage request and some CPU, which a fast stream pays
for in throughput): ``ROUND_GAP`` between the starts of two rounds, and ``WRITE_SPACING`` per write of a round (many
partitions moving at once: at most ``1 / WRITE_SPACING`` writes a second, whatever their number). A confirmed
position is thus saved within ``max(ROUND_GAP, partitions x WRITE_SPACING, latency) + latency``: a crash re-reads
what was not confirmed yet plus that much of delivery (under 0.1 s for up to 5 partitions while the store answers
within 25 ms).
Stopping writes what is pending at once, cutting short the wait after a failed write. An ack of a partition this
instance no longer reads (it moved to another owner, or was closed) is dropped: the new owner writes that
partition's checkpoints from the position it started at.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from azure.eventhub.aio import CheckpointStore

from azure_eventhub import metrics
from connectors.locks import InstanceLock
from connectors.logs import LogFunction, OnceLogger, describe_error
from connectors.retry import Backoff
from connectors.state import StateFile, thread_to_its_end
from connectors.stopping import sleep_or_stop

# A partition's owner, once read as this instance, is trusted this long (at most the load-balancing interval, far
# below the ownership expiry): one HEAD per partition per interval instead of one per checkpoint write.
OWNER_CHECK_MAX_AGE = 5.0
ROUND_GAP = 0.05  # least seconds between the starts of two rounds of checkpoint writes
WRITE_SPACING = 0.01  # ... and at least this many per write of the earlier round
FLUSH_RETRY = 0.2  # seconds between two attempts of a failed write while a flush (the stop) waits for it


@dataclass(frozen=True)
class FirstStart:
    """The trigger's first start: the hub's partitions then, and when (``None`` in a record of version 1.0)."""

    partition_ids: list[str]
    started_at: datetime | None

    @classmethod
    def from_json(cls, value: Any) -> FirstStart | None:
        if value is None:
            return None
        if isinstance(value, list):  # version 1.0: the ids alone
            return cls([str(pid) for pid in value], None)
        started = value.get("started_at")
        return cls([str(pid) for pid in value["partition_ids"]], datetime.fromisoformat(started) if started else None)

    def to_json(self) -> dict[str, Any]:
        return {"partition_ids": list(self.partition_ids),
                "started_at": self.started_at.isoformat() if self.started_at else None}


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints in a local JSON file; ownership granted to whoever asks (a single consumer)."""

    def __init__(self, path: Path):
        self.file = StateFile(path)
        self._data: dict[str, dict[str, dict[str, Any]]] = self.file.load({}) or {}  # raises CorruptStateError
        self._partitions_file = StateFile(Path(path).with_name("eventhub-partitions.json"))
        # Refuse a second consumer on the same local checkpoints: both would read every partition.
        self._instance = InstanceLock(
            Path(path).with_name(Path(path).name + ".lock"),
            "storage_connection_string",
            "the local checkpoint store serves one instance only; configure a storage account and container to "
            "run several",
        )
        self._ownership: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def _key(namespace: str, hub: str, group: str) -> str:
        return f"{namespace}/{hub}/{group}".lower()  # as the Blob store names its blobs

    async def list_ownership(self, fully_qualified_namespace, eventhub_name, consumer_group, **kwargs):
        return [dict(o) for key, o in self._ownership.items() if key[:3] == (fully_qualified_namespace,
                                                                               eventhub_name, consumer_group)]

    async def claim_ownership(self, ownership_list: Iterable[dict[str, Any]], **kwargs) -> list[dict[str, Any]]:
        claimed = []
        for ownership in ownership_list:
            key = (ownership["fully_qualified_namespace"], ownership["eventhub_name"], ownership["consumer_group"],
                   ownership["partition_id"])
            granted = dict(ownership, etag=str(uuid.uuid4()), last_modified_time=time.time())
            self._ownership[key] = granted
            claimed.append(dict(granted))
        return claimed

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs) -> None:
        key = self._key(checkpoint["fully_qualified_namespace"], checkpoint["eventhub_name"],
                        checkpoint["consumer_group"])
        async with self._lock:
            entry = {"offset": str(checkpoint["offset"]), "sequence_number": int(checkpoint["sequence_number"])}
            partitions = self._data.setdefault(key, {})
            previous = partitions.get(checkpoint["partition_id"])
            partitions[checkpoint["partition_id"]] = entry
            # fsync off the loop (the other partitions keep receiving meanwhile), the lock held until the thread
            # returned even if this caller is cancelled (a stop, the writer's timeout): never two saves at once.
            def settle(saved: bool) -> None:
                if saved:
                    return
                if previous is None:
                    partitions.pop(checkpoint["partition_id"], None)
                else:
                    partitions[checkpoint["partition_id"]] = previous

            await thread_to_its_end(self.file.save, self._data, settle=settle)

    async def list_checkpoints(self, fully_qualified_namespace, eventhub_name, consumer_group, **kwargs):
        partitions = self._data.get(self._key(fully_qualified_namespace, eventhub_name, consumer_group), {})
        return [
            {
                "fully_qualified_namespace": fully_qualified_namespace,
                "eventhub_name": eventhub_name,
                "consumer_group": consumer_group,
                "partition_id": partition_id,
                "offset": entry["offset"],
                "sequence_number": entry["sequence_number"],
            }
            for partition_id, entry in partitions.items()
        ]

    async def load_first_start(self, fully_qualified_namespace, eventhub_name, consumer_group) -> FirstStart | None:
        recorded = self._partitions_file.load({}) or {}
        return FirstStart.from_json(recorded.get(self._key(fully_qualified_namespace, eventhub_name, consumer_group)))

    async def record_first_start(self, fully_qualified_namespace, eventhub_name, consumer_group,
                                 first: FirstStart) -> FirstStart:
        """Record the first start unless recorded already (an older record without its time gets this one's);
        the first start recorded."""
        key = self._key(fully_qualified_namespace, eventhub_name, consumer_group)
        async with self._lock:
            recorded = self._partitions_file.load({}) or {}
            current = FirstStart.from_json(recorded.get(key))
            if current is None or current.started_at is None:
                current = first if current is None else FirstStart(current.partition_ids, first.started_at)
                recorded[key] = current.to_json()
                await thread_to_its_end(self._partitions_file.save, recorded)
            return current

    async def close(self) -> None:
        self._instance.release()


@dataclass(frozen=True, slots=True)
class Position:
    offset: str
    sequence_number: int
    owner: int | None = None  # the reading of the partition it came from (``CheckpointWriter.claimed``)


class CheckpointWriter:
    """Writes each partition's latest confirmed position, coalescing pending acks (everything on the event loop)."""

    def __init__(self, store: CheckpointStore, namespace: str, hub: str, group: str, log: LogFunction,
                 timeout: float = 30.0, retry_base: float = 1.0, owner_max_age: float = 0.0,
                 gap: float = ROUND_GAP, spacing: float = WRITE_SPACING):
        self.store = store
        self.base = {"fully_qualified_namespace": namespace, "eventhub_name": hub, "consumer_group": group}
        self._log = log
        self._timeout = timeout
        self._retry_base = retry_base
        self._gap = gap
        self._spacing = spacing
        self._pending: dict[str, Position] = {}
        self._written: dict[str, int] = {}
        self._owners: dict[str, int] = {}  # partition -> token of its current reading by this instance
        self.owner_id: str | None = None  # this run's owner id in the ownership blobs, once the client has one
        self._owner_max_age = owner_max_age
        self._owned_checked: dict[str, float] = {}  # partition -> when its ownership blob last named this instance
        self._readings = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = asyncio.Event()  # set while a flush waits: no pause between rounds
        self._ended = False  # ``run`` returned (cancelled, or died)
        self._outage = OnceLogger(log)

    def confirmed(self, partition_id: str, offset: str, sequence_number: int, owner: int | None = None) -> None:
        """Everything of ``partition_id`` up to this event was delivered (the forwarder's ack: records, never waits).

        ``owner``: the token of the reading the event came from; if the partition was closed since, the position
        is dropped (``None``: the position is not tied to a reading)."""
        if owner is not None and self._owners.get(partition_id) != owner:
            metrics.checkpoints_dropped.inc()
            return
        current = self._pending.get(partition_id)
        if current is None or sequence_number > current.sequence_number:
            self._pending[partition_id] = Position(offset, sequence_number, owner)
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._rounds()
        finally:
            self._ended = True  # nothing more is written: a flush stops waiting

    async def _rounds(self) -> None:
        backoff = Backoff(base=self._retry_base, cap=30.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            if not batch:
                continue
            started = asyncio.get_running_loop().time()
            self._idle.clear()
            try:
                failed, attempted = await self._write(batch)
            finally:
                self._idle.set()
            if failed:
                for partition_id, position in failed.items():  # for the next attempt, unless a newer one came
                    self._pending.setdefault(partition_id, position)
                delay = backoff.next_delay()
                await self._pause(delay)  # a flush (the stop) cuts it short: the last checkpoints before exiting
                if self._hurry.is_set():
                    await asyncio.sleep(min(delay, FLUSH_RETRY))  # retried at this pace while the flush waits
                self._wake.set()
            else:
                backoff.reset()
                gap = max(self._gap, attempted * self._spacing)
                await self._pause(started + gap - asyncio.get_running_loop().time())

    async def _pause(self, seconds: float) -> None:
        """Between two rounds (or attempts): acks arriving meanwhile join the next one; a flush cuts it short."""
        await sleep_or_stop(seconds, self._hurry)

    async def _write(self, batch: dict[str, Position]) -> tuple[dict[str, Position], int]:
        """The positions whose write failed, and how many writes were attempted (partitions that did not move since
        their last write are skipped)."""
        todo = {pid: pos for pid, pos in batch.items() if pos.sequence_number > self._written.get(pid, -1)}
        results = await asyncio.gather(*(self._write_one(pid, pos) for pid, pos in todo.items()),
                                       return_exceptions=True)
        failed = {}
        for (partition_id, position), result in zip(todo.items(), results):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failed[partition_id] = position
                self._failed(partition_id, result)
            elif result:
                if self._reads(partition_id, position):
                    self._written[partition_id] = position.sequence_number
                metrics.checkpoints_written.inc()
                metrics.checkpoint_sequence.labels(partition_id).set(position.sequence_number)
        if not failed:
            self._outage.ended("Checkpoint store reachable again; checkpoints are saved again")
        return failed, len(todo)

    async def _still_owned(self, partition_id: str) -> bool:
        owner_of = getattr(self.store, "owner_of", None)  # shared stores only: the local one has one consumer
        if owner_of is None or self.owner_id is None:
            return True
        started = time.monotonic()
        checked = self._owned_checked.get(partition_id)
        if checked is not None and started - checked < self._owner_max_age:
            return True
        owner = await asyncio.wait_for(owner_of(**self.base, partition_id=partition_id), self._timeout)
        if owner != self.owner_id:
            self._owned_checked.pop(partition_id, None)
            return False
        self._owned_checked[partition_id] = started  # as of the request, not its answer
        return True

    def _reads(self, partition_id: str, position: Position) -> bool:
        """Is the reading this position came from still this instance's reading of the partition?"""
        return position.owner is None or self._owners.get(partition_id) == position.owner

    async def _write_one(self, partition_id: str, position: Position) -> bool:
        """Write the position; False when it was dropped instead: its partition closed while it waited, or another
        instance claimed it already (a reader held back by a slow runtime sees its link stolen only once the
        runtime confirms its batch: the ownership blob says so first, read at most every ``owner_max_age``, so a
        loser writes nothing later than that after the handover)."""
        if not self._reads(partition_id, position) or not await self._still_owned(partition_id):
            metrics.checkpoints_dropped.inc()
            return False
        checkpoint = dict(self.base, partition_id=partition_id, offset=position.offset,
                          sequence_number=position.sequence_number)
        await asyncio.wait_for(self.store.update_checkpoint(checkpoint), self._timeout)
        return True

    def _failed(self, partition_id: str, error: BaseException) -> None:
        metrics.checkpoint_failures.inc()
        self._outage.began(
            f"Saving the checkpoint of partition {partition_id} failed ({describe_error(error)}); the records "
            "were delivered, retrying: if the trigger restarts meanwhile, they are read and sent again",
            "error",
        )

    async def flush(self, timeout: float) -> bool:
        """Write what is pending now; True when nothing is left unwritten."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._hurry.set()
        try:
            while True:
                if not self._pending and self._idle.is_set():
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0 or self._ended:
                    return False
                self._wake.set()
                await asyncio.sleep(min(0.05, remaining))
        finally:
            self._hurry.clear()

    def claimed(self, partition_id: str) -> int:
        """This instance starts reading the partition: the token its acks carry."""
        self._readings += 1
        self._owners[partition_id] = self._readings
        return self._readings

    def forget(self, partition_id: str) -> None:
        """This instance stopped reading the partition (closed, or it moved to another owner): positions not
        written yet, and acks still to come of that reading, are dropped."""
        self._owners.pop(partition_id, None)
        self._owned_checked.pop(partition_id, None)
        if self._pending.pop(partition_id, None) is not None:
            metrics.checkpoints_dropped.inc()
        self._written.pop(partition_id, None)


