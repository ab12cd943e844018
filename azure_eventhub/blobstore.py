"""The Blob checkpoint store, in a module of its own: its import (the vendored storage client and aiohttp, 0.15-0.3
s) is paid only when a storage account is configured, and off the loop once the request to the hub left."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import orjson
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import AioHttpTransport
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from azure_eventhub.checkpoints import FirstStart


# The transport's own settings among the store's options (the rest are the clients' and their policies').
_CONNECTION_OPTIONS = ("connection_timeout", "read_timeout", "connection_data_block_size")


class StoreTransport(AioHttpTransport):
    """The storage clients' HTTP transport, with one TLS context for all its requests. Given the trusted authorities as
    a file (``connection_verify``), azure-core's transport builds a new context from it for every request, parsing
    the whole bundle: tens of milliseconds of CPU per checkpoint write, plain HTTP included. The session, made on
    the loop at first use, verifies with ``ssl_context`` (requests keep the default ``connection_verify=True``, which
    defers to the session's connector)."""

    def __init__(self, ssl_context: ssl.SSLContext, **options: Any) -> None:
        super().__init__(**options)
        self.ssl_context = ssl_context

    async def open(self) -> None:
        if self.session is None:  # first use, or reopened after a close
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context),
                trust_env=False,  # the store's proxy is looked up once and given as ``proxies``
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)  # as azure-core makes its own
        await super().open()


class BlobStore(BlobCheckpointStore):
    """The client's Blob checkpoint store, plus the first start (its time and partition ids) in a blob beside the
    checkpoints (``NAMESPACE/HUB/GROUP/partitions``, JSON; the client lists only ``checkpoint/`` and
    ``ownership/`` blobs).

    Its own blobs go through a container client of its own (``container_client``, the public
    ``azure.storage.blob.aio.ContainerClient``), built from the very arguments the store's client is built with (URL,
    credential, API version, options; a connection string reaches here as the store's ``from_connection_string`` made
    them), opened and closed with the store: the store's own client is not public.

    ``ssl_context``: each client sends through a ``StoreTransport`` of its own verifying with it (None: azure-core's
    own transport, from the options)."""

    def __init__(self, blob_account_url: str, container_name: str, *, credential: Any = None,
                 api_version: str = "2019-07-07", secondary_hostname: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        connection = {key: kwargs[key] for key in _CONNECTION_OPTIONS if key in kwargs}
        options = dict(kwargs)
        if ssl_context is not None:  # one transport per client: each client closes its own
            kwargs["transport"] = StoreTransport(ssl_context, **connection)
            options["transport"] = StoreTransport(ssl_context, **connection)
        # As the store does for its own client (it writes into the headers it is given, so a copy here).
        options["headers"] = {**(kwargs.get("headers") or {}), "x-ms-version": api_version}
        self.container_client = ContainerClient(blob_account_url, container_name, credential=credential,
                                                api_version=api_version, secondary_hostname=secondary_hostname,
                                                **options)
        super().__init__(blob_account_url, container_name, credential=credential, api_version=api_version,
                         secondary_hostname=secondary_hostname, **kwargs)

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
