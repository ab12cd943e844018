"""The Blob checkpoint store, in a module of its own: its import (the vendored storage client and aiohttp, about
0.3 s) is paid only when a storage account is configured, and only after the hub was reached."""

from __future__ import annotations

import orjson
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore


class BlobStore(BlobCheckpointStore):
    """The client's Blob checkpoint store, plus the first start's partition ids in a blob beside the checkpoints
    (``NAMESPACE/HUB/GROUP/partitions``, JSON; the client lists only ``checkpoint/`` and ``ownership/`` blobs)."""

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

    async def load_partition_ids(self, fully_qualified_namespace, eventhub_name, consumer_group) -> list[str] | None:
        blob = self._partitions_blob(fully_qualified_namespace, eventhub_name, consumer_group)
        try:
            downloaded = await blob.download_blob()
            return orjson.loads(await downloaded.readall())["partition_ids"]
        except ResourceNotFoundError:
            return None

    async def record_partition_ids(self, fully_qualified_namespace, eventhub_name, consumer_group,
                                   partition_ids: list[str]) -> list[str]:
        """Create the blob unless it exists (several instances may start at once: the first one's record wins)."""
        blob = self._partitions_blob(fully_qualified_namespace, eventhub_name, consumer_group)
        try:
            await blob.upload_blob(orjson.dumps({"partition_ids": list(partition_ids)}), overwrite=False)
            return list(partition_ids)
        except ResourceExistsError:
            recorded = await self.load_partition_ids(fully_qualified_namespace, eventhub_name, consumer_group)
            return recorded if recorded is not None else list(partition_ids)
