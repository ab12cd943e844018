"""The Blob checkpoint store, in a module of its own: its import (the vendored storage client and aiohttp, 0.15-0.3
s) is paid only when a storage account is configured, and off the loop once the request to the hub left."""

from __future__ import annotations

import orjson
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

from azure_eventhub.checkpoints import FirstStart


class BlobStore(BlobCheckpointStore):
    """The client's Blob checkpoint store, plus the first start (its time and partition ids) in a blob beside the
    checkpoints (``NAMESPACE/HUB/GROUP/partitions``, JSON; the client lists only ``checkpoint/`` and
    ``ownership/`` blobs)."""

    def _partitions_blob(self, namespace: str, hub: str, group: str):
        return self._container_client.get_blob_client(f"{namespace}/{hub}/{group}/partitions".lower())

    async def owner_of(self, fully_qualified_namespace, eventhub_name, consumer_group, partition_id) -> str | None:
        """The owner id in the partition's ownership blob (one HEAD request), None without one."""
        blob = self._container_client.get_blob_client(
            f"{fully_qualified_namespace}/{eventhub_name}/{consumer_group}/ownership/{partition_id}".lower())
        try:
            properties = await blob.get_blob_properties()
        except ResourceNotFoundError:
            return None
        return (properties.metadata or {}).get("ownerid")

    async def load_first_start(self, fully_qualified_namespace, eventhub_name, consumer_group) -> FirstStart | None:
        blob = self._partitions_blob(fully_qualified_namespace, eventhub_name, consumer_group)
        try:
            downloaded = await blob.download_blob()
            return FirstStart.from_json(orjson.loads(await downloaded.readall()))
        except ResourceNotFoundError:
            return None

    async def record_first_start(self, fully_qualified_namespace, eventhub_name, consumer_group,
                                 first: FirstStart) -> FirstStart:
        """Create the blob unless it exists (several instances may start at once: the first one's record wins).
        A record of version 1.0 (ids without a time) gets this start's time: instances upgraded together write
        times seconds apart, and the last one stays."""
        blob = self._partitions_blob(fully_qualified_namespace, eventhub_name, consumer_group)
        try:
            await blob.upload_blob(orjson.dumps(first.to_json()), overwrite=False)
            return first
        except ResourceExistsError:
            recorded = await self.load_first_start(fully_qualified_namespace, eventhub_name, consumer_group)
        if recorded is not None and recorded.started_at is not None:
            return recorded
        upgraded = FirstStart(recorded.partition_ids if recorded else first.partition_ids, first.started_at)
        await blob.upload_blob(orjson.dumps(upgraded.to_json()), overwrite=True)
        return upgraded
