"""Hubs, partitions and consumer groups: in-memory storage, retention, epochs, persistence.

Storage is columnar per partition (parallel lists indexed by `seq - base_seq`) so start
positions are bisects and a delivery is a slice of ready-made wire bytes.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterable, Protocol

from .codec import Array, Int, Timestamp
from .filters import StartPosition
from .hashing import partition_for_key
from .messages import ParsedEvent, parse_event, simple_message, split_batch, stamp
from .persistence import HubStore, PartitionLog, Record

_LOG = logging.getLogger(__name__)

DEFAULT_CONSUMER_GROUP = "$Default"
MAX_MESSAGE_SIZE = 1024 * 1024
MAX_PARTITIONS = 1024  # a dedicated cluster's limit (premium: 100, standard: 32)


def now_ms() -> int:
    return int(time.time() * 1000)


class Consumer(Protocol):
    """What the broker needs from a consumer link (implemented in links.py)."""

    name: str
    epoch: int | None

    def wake(self) -> None: ...


@dataclass
class Stats:
    connections_total: int = 0
    connections_open: int = 0
    events_published: int = 0
    bytes_published: int = 0
    publish_deliveries: int = 0
    publish_rejected: int = 0
    multi_frame_in: int = 0  # deliveries that arrived over several transfer frames
    multi_frame_out: int = 0  # deliveries split because they exceed the peer's max frame size
    events_delivered: int = 0
    bytes_delivered: int = 0
    tokens_accepted: int = 0
    tokens_refused: int = 0
    management_requests: int = 0
    links_stolen: int = 0
    links_unauthorized: int = 0  # detached when their token expired without renewal
    tokens_renewed: int = 0  # accepted on a connection already holding a valid token
    events_trimmed: int = 0
    connections_opened_at: list[float] = field(default_factory=list)  # epoch seconds, the last 100

    def as_dict(self) -> dict[str, int | list[float]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Partition:
    __slots__ = (
        "hub",
        "id",
        "base_seq",
        "wires",
        "offsets",
        "times",
        "header_lens",
        "next_seq",
        "next_offset",
        "last_offset",
        "last_time",
        "listeners",
        "log",
    )

    def __init__(self, hub: str, partition_id: str, log: PartitionLog | None = None) -> None:
        self.hub = hub
        self.id = partition_id
        self.base_seq = 0  # sequence number of wires[0]
        self.wires: list[bytes] = []
        self.offsets: list[int] = []
        self.times: list[int] = []
        self.header_lens: list[int] = []
        self.next_seq = 0
        self.next_offset = 0
        self.last_offset = -1
        self.last_time = 0
        self.listeners: set[Consumer] = set()
        self.log = log

    # -- writing ------------------------------------------------------------------------------
    def append(self, events: list[ParsedEvent], partition_key: str | None, enqueued_ms: int) -> int:
        enqueued_ms = max(enqueued_ms, self.last_time)  # enqueued time never goes backwards
        seq, offset = self.next_seq, self.next_offset
        records = [] if self.log is not None else None
        size = 0
        for event in events:
            wire, header_len = stamp(event, seq, offset, enqueued_ms, partition_key)
            self.wires.append(wire)
            self.offsets.append(offset)
            self.times.append(enqueued_ms)
            self.header_lens.append(header_len)
            if records is not None:
                records.append(Record(seq, offset, enqueued_ms, header_len, wire))
            self.last_offset = offset
            seq += 1
            offset += len(wire)
            size += len(wire)
        self.next_seq, self.next_offset, self.last_time = seq, offset, enqueued_ms
        if records:
            self.log.append(records)  # type: ignore[union-attr]
        return size

    def load(self, record: Record) -> None:
        """Replay one persisted record."""
        if not self.wires:
            self.base_seq = record.seq
        self.wires.append(record.wire)
        self.offsets.append(record.offset)
        self.times.append(record.enqueued_ms)
        self.header_lens.append(record.header_len)
        self.next_seq = record.seq + 1
        self.next_offset = record.offset + len(record.wire)
        self.last_offset = record.offset
        self.last_time = record.enqueued_ms

    def wake(self) -> None:
        for consumer in tuple(self.listeners):
            consumer.wake()

    def trim(self, max_events: int | None, oldest_ms: int | None) -> int:
        """Drop the oldest events beyond the retention limits; return how many went."""
        drop = 0
        if max_events is not None and len(self.wires) > max_events:
            drop = len(self.wires) - max_events
        if oldest_ms is not None:
            drop = max(drop, bisect.bisect_left(self.times, oldest_ms))
        if drop:
            del self.wires[:drop], self.offsets[:drop], self.times[:drop], self.header_lens[:drop]
            self.base_seq += drop
        return drop

    # -- reading ------------------------------------------------------------------------------
    @property
    def begin_seq(self) -> int:
        return self.base_seq if self.wires else self.next_seq

    def start_seq(self, start: StartPosition) -> int:
        """First sequence number a new consumer with this start position receives."""
        kind = start.kind
        if kind == "start":
            return self.begin_seq
        if kind == "latest":
            return self.next_seq
        if kind == "sequence":
            first = start.value if start.inclusive else start.value + 1
            return min(max(first, self.begin_seq), self.next_seq)
        column = self.offsets if kind == "offset" else self.times
        find = bisect.bisect_left if start.inclusive else bisect.bisect_right
        return self.base_seq + find(column, start.value)

    def refusal(self, start: StartPosition, group: str) -> str | None:
        """The service's refusal of a start position past the end of the partition (a checkpoint of a hub since
        deleted and created again, or of the other side of a geo-disaster-recovery failover): a sequence number
        beyond the next one, or an offset beyond the last event's. None when the position is valid."""
        if start.kind == "sequence":
            first = start.value if start.inclusive else start.value + 1
            if first <= self.next_seq:
                return None
            what, last = "sequence number", self.next_seq - 1
        elif start.kind == "offset":
            if start.value <= self.last_offset:
                return None
            what, last = "offset", self.last_offset
        else:
            return None
        stamp_ = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return (f"The supplied {what} '{start.value}' is invalid. The last {what} in the system is '{last}' "
                f"TrackingId:{uuid.uuid4()}_B0, SystemTracker:emulator:eventhub:{self.hub}~{self.id}|{group}, "
                f"Timestamp:{stamp_}")

    def properties(self) -> dict:
        return {
            "name": self.hub,
            "partition": self.id,
            "begin_sequence_number": self.begin_seq,
            "last_enqueued_sequence_number": self.next_seq - 1,
            "last_enqueued_offset": str(self.last_offset),
            "last_enqueued_time_utc": Timestamp(self.last_time),
            "is_partition_empty": not self.wires,
        }


class ConsumerGroup:
    """Receivers per partition, with the owner-level (epoch) rules of the real service:
    an epoch receiver takes the partition from receivers with a lower or equal epoch and from
    every non-epoch receiver (they are detached with amqp:link:stolen); a receiver with a lower
    epoch than the current owner, or a non-epoch receiver while an epoch receiver exists, is
    refused. Non-epoch receivers are not capped (the real service allows 5)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: dict[str, set[Consumer]] = {}

    def claim(self, partition_id: str, consumer: Consumer) -> tuple[str | None, list[Consumer]]:
        """Return (refusal description or None, receivers to detach as stolen)."""
        current = self.receivers.setdefault(partition_id, set())
        epochs = [c.epoch for c in current if c.epoch is not None]
        epoch = consumer.epoch
        if epoch is None:
            if epochs:
                return (
                    f"At least one receiver for the endpoint is created with epoch of '{max(epochs)}', and so "
                    "non-epoch receiver is not allowed. Either reconnect with a higher epoch, or make sure all "
                    "epoch receivers are closed or disconnected.",
                    [],
                )
            current.add(consumer)
            return None, []
        if epochs and max(epochs) > epoch:
            return (
                f"Receiver with a higher epoch '{max(epochs)}' already exists. A new receiver with epoch "
                f"'{epoch}' cannot be created. Make sure you are creating receiver with increasing epoch value "
                "to ensure connectivity, or ensure all old epoch receivers are closed or disconnected.",
                [],
            )
        stolen = list(current)
        current.clear()
        current.add(consumer)
        return None, stolen

    def release(self, partition_id: str, consumer: Consumer) -> None:
        current = self.receivers.get(partition_id)
        if current is not None:
            current.discard(consumer)


class EventHub:
    def __init__(self, name: str, partition_count: int, created_at: int, store: HubStore | None) -> None:
        self.name = name
        self.created_at = created_at
        self.store = store
        self.partitions: list[Partition] = []
        self.consumer_groups: dict[str, ConsumerGroup] = {}
        self.grow(partition_count)

    def grow(self, partition_count: int) -> list[Partition]:
        """Add partitions up to ``partition_count``, as the service does when the count is raised (premium and
        dedicated tiers): ids go on from the last one, new partitions start empty at sequence number 0, existing
        ones keep their events; round robin and partition keys spread over the new count from now on."""
        added = [
            Partition(self.name, str(i), self.store.partition_log(str(i)) if self.store else None)
            for i in range(len(self.partitions), partition_count)
        ]
        self.partitions.extend(added)
        self._round_robin = itertools.cycle(range(len(self.partitions)))
        return added

    def partition(self, partition_id: str) -> Partition | None:
        try:
            index = int(partition_id)
        except (TypeError, ValueError):
            return None
        if 0 <= index < len(self.partitions) and str(index) == partition_id.strip():
            return self.partitions[index]
        return None

    def choose_partition(self, partition_key: str | None) -> Partition:
        if partition_key is not None:
            return self.partitions[partition_for_key(partition_key, len(self.partitions))]
        return self.partitions[next(self._round_robin)]

    def properties(self) -> dict:
        return {
            "name": self.name,
            "created_at": Timestamp(self.created_at),
            "partition_count": Int(len(self.partitions)),
            "partition_ids": Array([p.id for p in self.partitions], str),
        }


class Broker:
    def __init__(
        self,
        hubs: dict[str, int],
        keys: dict[str, str],
        *,
        consumer_groups: Iterable[str] = (),
        strict_consumer_groups: bool = False,
        persist_dir: str | Path | None = None,
        max_events: int | None = None,
        retention_seconds: float | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        if not hubs:
            raise ValueError("at least one event hub is required")
        self.keys = dict(keys)
        self.strict_consumer_groups = strict_consumer_groups
        self.max_events = max_events
        self.retention_seconds = retention_seconds
        self.max_message_size = max_message_size
        self.stats = Stats()
        # Receivers gone (closed by their client, or stolen by a newer epoch): when, where, how.
        self.receivers_ended: deque[dict] = deque(maxlen=10_000)
        self.persist_dir = Path(persist_dir) if persist_dir else None
        self.hubs: dict[str, EventHub] = {}
        for name, count in hubs.items():
            if count < 1:
                raise ValueError(f"hub {name!r} needs at least one partition")
            self.hubs[name.lower()] = self._create_hub(name, count)
        groups = [DEFAULT_CONSUMER_GROUP, *consumer_groups]
        for hub in self.hubs.values():
            for group in groups:
                hub.consumer_groups.setdefault(group.lower(), ConsumerGroup(group))

    def _create_hub(self, name: str, count: int) -> EventHub:
        if self.persist_dir is None:
            return EventHub(name, count, now_ms(), None)
        store = HubStore(self.persist_dir, name)
        meta = store.load_meta() or {}
        created = int(meta.get("created_at") or now_ms())
        persisted = int(meta.get("partitions") or 0)
        if persisted > count:  # partitions are never removed: a hub grown while running keeps its count
            _LOG.info("hub %s was grown to %d partitions (configured %d): keeping %d", name, persisted, count, persisted)
            count = persisted
        elif persisted and persisted < count:
            _LOG.warning("hub %s was persisted with %d partitions, now %d", name, persisted, count)
        for extra in store.extra_partition_files(count):
            _LOG.warning("hub %s: ignoring %s (partition beyond the configured count)", name, extra.name)
        store.save_meta({"created_at": created, "partitions": count})
        hub = EventHub(name, count, created, store)
        for partition in hub.partitions:
            for record in partition.log.replay():  # type: ignore[union-attr]
                partition.load(record)
            if partition.wires:
                _LOG.info("hub %s partition %s: replayed %d events", name, partition.id, len(partition.wires))
        self._trim(hub)
        return hub

    def set_partition_count(self, hub_name: str, count: int) -> list[str]:
        """Raise a hub's partition count (what Azure Resource Manager does; AMQP cannot); the ids added."""
        hub = self.hub(hub_name)
        if hub is None:
            raise KeyError(hub_name)
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"partition_count must be an integer, not {count!r}")
        if count < len(hub.partitions):
            raise ValueError(
                f"the partition count of '{hub.name}' cannot be decreased ({len(hub.partitions)} -> {count})"
            )
        if count > MAX_PARTITIONS:
            raise ValueError(f"at most {MAX_PARTITIONS} partitions per event hub")
        added = hub.grow(count)
        if hub.store is not None:
            hub.store.save_meta({"created_at": hub.created_at, "partitions": count})
        if added:
            _LOG.info("hub %s now has %d partitions", hub.name, count)
        return [partition.id for partition in added]

    def recreate_hub(self, hub_name: str) -> EventHub:
        """Delete the hub and create it again under the same name, as a person may in the portal (or what a
        geo-disaster-recovery failover looks like to a reader): same partition count and consumer groups, no
        events, sequence numbers and offsets from 0. The caller detaches the links of the old hub."""
        old = self.hub(hub_name)
        if old is None:
            raise KeyError(hub_name)
        for partition in old.partitions:
            if partition.log is not None:
                partition.log.close()
                partition.log.path.unlink(missing_ok=True)
        created = max(now_ms(), old.created_at + 1)
        if old.store is not None:
            old.store.save_meta({"created_at": created, "partitions": len(old.partitions)})
        hub = EventHub(old.name, len(old.partitions), created, old.store)
        for key, group in old.consumer_groups.items():
            hub.consumer_groups[key] = ConsumerGroup(group.name)
        self.hubs[old.name.lower()] = hub
        _LOG.info("hub %s deleted and created again (%d partitions, empty)", old.name, len(hub.partitions))
        return hub

    # -- lookups ------------------------------------------------------------------------------
    def hub(self, name: str | None) -> EventHub | None:
        return self.hubs.get((name or "").lower())

    def consumer_group(self, hub: EventHub, name: str) -> ConsumerGroup | None:
        group = hub.consumer_groups.get(name.lower())
        if group is None and not self.strict_consumer_groups:
            group = hub.consumer_groups[name.lower()] = ConsumerGroup(name)
        return group

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, hub: EventHub, partition: Partition | None, payload: bytes, batch: bool) -> Partition | None:
        """Store the events of one producer delivery (a single message or a batch)."""
        if batch:
            ranges, key = split_batch(payload)
            events = [parse_event(payload, start, end) for start, end in ranges]
        else:
            events = [parse_event(payload)]
            key = events[0].partition_key
        if not events:
            return partition
        if key is None:
            key = events[0].partition_key
        target = partition or hub.choose_partition(key)
        self._store(hub, target, events, key)
        return target

    def publish_bodies(
        self,
        hub_name: str,
        bodies: Iterable[bytes],
        *,
        partition_id: str | None = None,
        partition_key: str | None = None,
        properties: dict | None = None,
    ) -> None:
        """In-process shortcut (no AMQP): append events as a producer with a data body would."""
        hub = self.hub(hub_name)
        if hub is None:
            raise KeyError(hub_name)
        events = [parse_event(simple_message(body, properties)) for body in bodies]
        if partition_id is not None:
            target = hub.partition(partition_id)
            if target is None:
                raise KeyError(partition_id)
            self._store(hub, target, events, partition_key)
        elif partition_key is not None:
            self._store(hub, hub.choose_partition(partition_key), events, partition_key)
        else:
            for event in events:
                self._store(hub, hub.choose_partition(None), [event], None)

    def _store(self, hub: EventHub, partition: Partition, events: list[ParsedEvent], key: str | None) -> None:
        size = partition.append(events, key, now_ms())
        self.stats.events_published += len(events)
        self.stats.bytes_published += size
        if self.max_events is not None or self.retention_seconds is not None:
            self._trim_partition(partition)
        partition.wake()

    # -- retention ----------------------------------------------------------------------------
    def _trim_partition(self, partition: Partition) -> None:
        oldest = now_ms() - int(self.retention_seconds * 1000) if self.retention_seconds is not None else None
        self.stats.events_trimmed += partition.trim(self.max_events, oldest)

    def _trim(self, hub: EventHub) -> None:
        if self.max_events is not None or self.retention_seconds is not None:
            for partition in hub.partitions:
                self._trim_partition(partition)

    def enforce_retention(self) -> None:
        for hub in self.hubs.values():
            self._trim(hub)

    def close(self) -> None:
        for hub in self.hubs.values():
            for partition in hub.partitions:
                if partition.log is not None:
                    partition.log.close()
