"""The Blob checkpoint store, in a module of its own: its import (the vendored storage client and aiohttp, 0.15-0.3
s) is paid only when a storage account is configured, and off the loop once the request to the hub left."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import AioHttpTransport
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from azure_eventhub.checkpoints import FirstStart
from azure_eventhub.clients import tls_context

_TIMEOUTS = ("connection_timeout", "read_timeout")


class StoreTransport(AioHttpTransport):
    """The storage clients' HTTP transport, its TLS settings made once (``clients.tls_context``: the module's
    trusted authorities). Given them as a CA file (``connection_verify``), azure-core makes a new SSL context for
    every request, the bundle parsed again (CPU, and over a megabyte of native memory while the context lives), and
    aiohttp, whose pool is keyed on the context, opens a new connection for each and keeps the idle one 15 s: with
    checkpoints written several times a second, hundreds of contexts and connections were alive at any time."""

    def __init__(self, **timeouts: Any) -> None:
        # Verification on: True leaves TLS to the session's connector (below), with no per-request context.
        super().__init__(connection_verify=True, use_env_settings=False, **timeouts)
        self._session_made = False

    async def open(self) -> None:
        if self.session is None and not self._session_made:  # once: closed stays closed, as the library's does
            self._session_made = True
            # As the library makes its own (no proxy variables: the store's proxy is set explicitly), plus the TLS.
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls_context()), trust_env=False,
                                                 cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        await super().open()


class BlobStore(BlobCheckpointStore):
    """The client's Blob checkpoint store, plus the first start (its time and partition ids) in a blob beside the
    checkpoints (``NAMESPACE/HUB/GROUP/partitions``, JSON; the client lists only ``checkpoint/`` and
    ``ownership/`` blobs).

    Its own blobs go through a container client of its own (``container_client``, the public
    ``azure.storage.blob.aio.ContainerClient``), built from the very arguments the store's client is built with (URL,
    credential, API version, options; a connection string reaches here as the store's ``from_connection_string`` made
    them), opened and closed with the store: the store's own client is not public. Each client has a
    ``StoreTransport`` of its own, with the timeouts it is given."""

    def __init__(self, blob_account_url: str, container_name: str, *, credential: Any = None,
                 api_version: str = "2019-07-07", secondary_hostname: str | None = None, **kwargs: Any) -> None:
        options = dict(kwargs)
        # As the store does for its own client (it writes into the headers it is given, so a copy here).
        options["headers"] = {**(kwargs.get("headers") or {}), "x-ms-version": api_version}
        timeouts = {name: kwargs[name] for name in _TIMEOUTS if name in kwargs}
        self.container_client = ContainerClient(blob_account_url, container_name, credential=credential,
                                                api_version=api_version, secondary_hostname=secondary_hostname,
                                                transport=StoreTransport(**timeouts), **options)
        super().__init__(blob_account_url, container_name, credential=credential, api_version=api_version,
                         secondary_hostname=secondary_hostname, transport=StoreTransport(**timeouts), **kwargs)

    async def __aenter__(self) -> BlobStore:
        await self.container_client.__aenter__()
        try:
            await super().__aenter__()
        except BaseException:
            await self.container_client.close()
            raise
        return self

    async def __aexit__(self, *args: Any) -> None:  # also ``close``, which the store makes this call
        try:
            await super().__aexit__(*args)
        finally:
            await self.container_client.__aexit__(*args)

    def _partitions_blob(self, namespace: str, hub: str, group: str):
        return self.container_client.get_blob_client(f"{namespace}/{hub}/{group}/partitions".lower())

    async def owner_of(self, fully_qualified_namespace, eventhub_name, consumer_group, partition_id) -> str | None:
        """The owner id in the partition's ownership blob (one HEAD request), None without one."""
        blob = self.container_client.get_blob_client(
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
