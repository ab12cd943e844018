"""The event hub's partitions: where a partition without a checkpoint starts, and partitions added while running.

The client lists the hub's partitions once per process (its load balancing keeps that list for good), so a
partition added to a running hub would never be read. ``PartitionWatch.check`` lists them again every few
seconds and hands a changed list to the client's load balancing, which claims the new ones at its next round.

``starting_position`` applies only to the partitions the trigger saw when it first started, and ``latest`` means
"from the first start": the first start's time is recorded beside the checkpoints with those partitions, and a
partition of them without a checkpoint is read from its events enqueued since then (less a minute, for clocks
apart), at every start. Re-reading ``@latest`` at each start would skip for good what reached a quiet partition
while the trigger was stopped, or what was read but not confirmed before a crash. A partition added later holds
nothing older than the trigger, so without a checkpoint it is read from its beginning, also after a restart.
(Upgrading from 1.0, which recorded no time, the upgrade's first start is taken as the first start.)
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.eventhub.aio import EventHubConsumerClient

from azure_eventhub import metrics
from azure_eventhub.checkpoints import FirstStart
from azure_eventhub.eventhub_internals import set_partition_ids
from connectors.logs import LogFunction

EARLIEST = "-1"
LATEST = "@latest"
CLOCK_SKEW = timedelta(minutes=1)  # `latest` reads from the first start less this: the hub's clock may be behind
# The service's refusal of a receiver whose start lies past the end of the partition (azure-sdk-for-python#30931).
_PAST_THE_END = re.compile(r"supplied (offset|sequence number) '(-?\d+)' is invalid\. The last (?:offset|sequence "
                           r"number) in the system is '(-?\d+)'")


@dataclass(frozen=True)
class PastTheEnd:
    """A checkpoint (or a reading) ahead of what its partition holds: the hub was deleted and created again under
    the same name, or failed over (geo-DR) to a namespace that has not reached that position."""

    partition_id: str
    what: str  # "sequence number" or "offset"
    checkpoint: int
    last: int  # the partition's last sequence number (or offset), -1 when it never held an event

    def describe(self) -> str:
        return (f"partition {self.partition_id} is positioned at {self.what} {self.checkpoint} (its checkpoint, or "
                f"what was read), past the end of the partition (its last {self.what} is {self.last})")


def past_the_end(partition_id: str, error: BaseException) -> PastTheEnd | None:
    """The positions in the service's refusal of a start past the end, if ``error`` is one."""
    match = _PAST_THE_END.search(str(error))
    if match is None:
        return None
    return PastTheEnd(partition_id, match.group(1), int(match.group(2)), int(match.group(3)))


def beyond(partition_id: str, sequence_number: int, properties: dict) -> PastTheEnd | None:
    """A position (a checkpoint's or the last one read) compared with the partition's properties."""
    last = properties["last_enqueued_sequence_number"]
    if sequence_number > last:
        return PastTheEnd(partition_id, "sequence number", sequence_number, last)
    return None


class PartitionWatch:
    def __init__(self, client: EventHubConsumerClient, store: Any, base: dict[str, str],
                 starting_position: str | datetime, log: LogFunction):
        self.client = client
        self.store = store
        self.base = base
        self.configured = starting_position
        self.log = log
        self.current: list[str] = []
        # What the client's processor reads for a partition without a checkpoint; it keeps this very dict, so
        # the partitions added later are listed in it too (the client's own default is also the beginning).
        self.positions: dict[str, str | datetime] = {}
        self._told_stuck = False

    async def starting_positions(self, ids: list[str] | None = None) -> dict[str, str | datetime]:
        """Record the first start (unless recorded already); the position of each partition. ``ids``: the hub's
        partitions if just read (the start-up probe's), else they are listed."""
        if ids is None:
            ids = await asyncio.wait_for(self.client.get_partition_ids(), 60)
        self._seen(ids)
        key = (self.base["fully_qualified_namespace"], self.base["eventhub_name"], self.base["consumer_group"])
        first = await asyncio.wait_for(self.store.load_first_start(*key), 30)
        if first is None or first.started_at is None:
            first = await asyncio.wait_for(
                self.store.record_first_start(*key, FirstStart(list(ids), datetime.now(UTC))), 30)
        configured = self.configured
        if configured == LATEST and first.started_at is not None:
            configured = first.started_at - CLOCK_SKEW
        self.positions.update({pid: configured if pid in first.partition_ids else EARLIEST for pid in ids})
        later = [pid for pid in ids if pid not in first.partition_ids]
        if later and self.configured != EARLIEST:
            self.log(f"Partitions {', '.join(later)} were added to the event hub after this trigger first started: "
                     "where they have no checkpoint they are read from their beginning (starting_position applies "
                     "to the first start's partitions)", "info")
        return self.positions

    async def check(self) -> list[str]:
        """List the partitions again; the ids added since the last look (and the client told of them)."""
        ids = await asyncio.wait_for(self.client.get_partition_ids(), 15)
        if ids == self.current:
            return []
        added = [pid for pid in ids if pid not in self.current]
        before = len(self.current)
        self._seen(ids)
        for pid in added:
            self.positions.setdefault(pid, EARLIEST)
        if self._tell_load_balancing(ids):
            self.log(f"Event hub {self.base['eventhub_name']} now has {len(ids)} partitions (was {before}): "
                     f"reading the new partitions {', '.join(added)} from their beginning", "info")
        elif not self._told_stuck:
            self._told_stuck = True
            self.log(f"Event hub {self.base['eventhub_name']} now has {len(ids)} partitions (was {before}), but "
                     "this version of the azure-eventhub client cannot be told: restart the trigger to read "
                     f"partitions {', '.join(added)} (from their beginning, nothing is lost)", "error")
        return added

    async def checkpoints(self, timeout: float = 15) -> dict[str, dict[str, Any]]:
        """The checkpoints in the store, by partition."""
        listed = await asyncio.wait_for(self.store.list_checkpoints(
            self.base["fully_qualified_namespace"], self.base["eventhub_name"], self.base["consumer_group"]), timeout)
        return {item["partition_id"]: item for item in listed}

    async def past_the_end(self, ids: list[str] | None) -> list[PastTheEnd]:
        """The partitions whose checkpoint lies past their end (read at start, before the processor reads the
        checkpoints: it would wait there for ever, or retry a receiver the service refuses)."""
        checkpoints = await self.checkpoints()
        wanted = [pid for pid in (ids if ids is not None else checkpoints) if pid in checkpoints
                  and int(checkpoints[pid]["sequence_number"]) >= 0]
        if not wanted:
            return []
        properties = await asyncio.gather(
            *(asyncio.wait_for(self.client.get_partition_properties(pid), 15) for pid in wanted))
        found = (beyond(pid, int(checkpoints[pid]["sequence_number"]), props) for pid, props in zip(wanted, properties))
        return [item for item in found if item is not None]

    async def start_over(self, partition_id: str) -> None:
        """Replace the partition's checkpoint by its beginning: the processor reads the offset ``-1`` (before the
        first event) when it opens the partition next."""
        checkpoint = dict(self.base, partition_id=partition_id, offset=EARLIEST, sequence_number=-1)
        await asyncio.wait_for(self.store.update_checkpoint(checkpoint), 15)

    def _seen(self, ids: list[str]) -> None:
        self.current = list(ids)
        metrics.partitions.set(len(ids))

    def _tell_load_balancing(self, ids: list[str]) -> bool:
        """Replace the partition list the client's load balancing keeps (it lists them once, when empty)."""
        return set_partition_ids(self.client, ids)
