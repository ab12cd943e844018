"""The event hub's partitions: where a partition without a checkpoint starts, and partitions added while running.

The client lists the hub's partitions once per process (its load balancing keeps that list for good), so a
partition added to a running hub would never be read. ``PartitionWatch.check`` lists them again every few
seconds and hands a changed list to the client's load balancing, which claims the new ones at its next round.

``starting_position`` applies only to the partitions the trigger saw when it first started (recorded beside the
checkpoints). A partition added later holds nothing older than the trigger, so without a checkpoint it is read
from its beginning, also after a restart, whatever ``starting_position`` says: with ``latest`` it would be
skipped for good otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from azure.eventhub.aio import EventHubConsumerClient

from azure_eventhub import metrics

EARLIEST = "-1"
LogFunction = Callable[[str, str], None]


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

    async def starting_positions(self) -> dict[str, str | datetime]:
        """Record the partitions of the first start (unless recorded already); the position of each partition."""
        ids = await asyncio.wait_for(self.client.get_partition_ids(), 60)
        self._seen(ids)
        key = (self.base["fully_qualified_namespace"], self.base["eventhub_name"], self.base["consumer_group"])
        first = await asyncio.wait_for(self.store.load_partition_ids(*key), 30)
        if first is None:
            first = await asyncio.wait_for(self.store.record_partition_ids(*key, ids), 30)
        self.positions.update({pid: self.configured if pid in first else EARLIEST for pid in ids})
        later = [pid for pid in ids if pid not in first]
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

    def _seen(self, ids: list[str]) -> None:
        self.current = list(ids)
        metrics.partitions.set(len(ids))

    def _tell_load_balancing(self, ids: list[str]) -> bool:
        """Replace the partition list the client's load balancing keeps (it lists them once, when empty)."""
        processors = list(getattr(self.client, "_event_processors", {}).values())
        if not processors:
            return True  # not receiving yet: the processor lists the partitions itself when it starts
        managers = [getattr(processor, "_ownership_manager", None) for processor in processors]
        managers = [manager for manager in managers if hasattr(manager, "cached_parition_ids")]  # sic, the client's
        for manager in managers:
            manager.cached_parition_ids = list(ids)
        return bool(managers)
