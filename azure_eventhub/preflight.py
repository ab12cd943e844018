"""The Event Hubs trigger's steps of ``python main.py check``: the AMQP port (5671) or only 443, the hub (its
partitions), the consumer group (a receiver from the latest event, nothing read), the checkpoint store (a probe
blob written, read back and deleted). Nothing is consumed and no checkpoint or ownership is written."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError

from azure_eventhub.clients import (
    PROBE_OPTIONS,
    build_blob_store,
    build_client,
    build_credential,
    consumer_group_error,
    hub_error,
    hub_proxy,
    is_not_found,
    probe_hub,
    storage_endpoint,
    storage_error,
)
from azure_eventhub.config import EventHubConfiguration
from connectors.preflight import Check, StepFailed
from connectors.secrets import reveal

AMQP_PORT = 5671
WEBSOCKETS_PORT = 443
CONNECT_TIMEOUT = 5.0
RECEIVER_WAIT = 20.0  # seconds for a receiver link on the consumer group to open or be refused


def targets(config: EventHubConfiguration) -> list[tuple[str, str, str | None]]:
    found: list[tuple[str, str, str | None]] = []
    if config.uses_storage:
        found.append(("the storage account", storage_endpoint(config), reveal(config.http_proxy)))
    hub = hub_proxy(config)  # over WebSockets only: a proxy cannot carry plain AMQP
    if hub:
        host = config.namespace_host.split(":")[0]
        found.append(("the Event Hubs namespace", f"https://{host}:{WEBSOCKETS_PORT}", hub))
    return found


async def _reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def steps(config: EventHubConfiguration, check: Check) -> None:
    credential = build_credential(config)
    try:
        await _steps(config, check, credential)
    finally:
        if credential is not None:
            await credential.close()


async def _steps(config: EventHubConfiguration, check: Check, credential: Any) -> None:
    parts = urlsplit(f"sb://{config.namespace_host}")
    host = parts.hostname or config.namespace_host

    async def port() -> str:
        amqp = parts.port or AMQP_PORT
        if await _reachable(host, amqp):
            return f"{host}:{amqp} (AMQP) reachable"
        if await _reachable(host, WEBSOCKETS_PORT):
            raise StepFailed(f"{host}:{amqp} (AMQP) is unreachable from here but {host}:{WEBSOCKETS_PORT} is: set "
                             "`use_websockets` to true (AMQP over WebSockets on port 443)")
        raise StepFailed(f"neither {host}:{amqp} (AMQP) nor {host}:{WEBSOCKETS_PORT} (WebSockets) is reachable: "
                         "check the namespace in the connection string and the firewall (or set `http_proxy`)")

    if config.use_websockets or config.http_proxy:
        check.skip("Event Hubs port", f"WebSockets on port {WEBSOCKETS_PORT}" +
                   (" through `http_proxy`" if config.http_proxy else "") + ": port 5671 is not needed")
    else:
        await check.step("Event Hubs port", port)

    partitions: list[str] = []

    async def hub() -> str:
        properties = await probe_hub(config, credential)
        partitions.extend(properties.get("partition_ids") or [])
        return (f"event hub `{config.hub_name}` in {config.namespace_host}: {len(partitions)} partitions "
                f"({', '.join(partitions)})")

    if await check.step("Event hub", hub, timeout=70):
        await check.step("Consumer group", lambda: _consumer_group(config, credential, partitions[0]),
                         timeout=RECEIVER_WAIT + 10)
    else:
        check.skip("Consumer group", "needs the event hub")

    if not config.uses_storage:
        check.skip("Checkpoint store", "no storage account: checkpoints stay in the trigger's local state "
                                       "(one instance only)")
        return
    await check.step("Checkpoint store", lambda: _store(config, credential))


async def _consumer_group(config: EventHubConfiguration, credential: Any, partition_id: str) -> str:
    """A receiver on one partition from the latest event: opened means the group exists and may be read. The
    first empty wait (``max_wait_time``) says the link is open; no event is read, no checkpoint written."""
    client = build_client(config, None, credential, retry_total=0)
    outcome: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_event(partition_context, event) -> None:
        if not outcome.done():
            outcome.set_result(None)

    async def on_error(partition_context, error) -> None:
        if not outcome.done():
            outcome.set_result(error)

    receiving = asyncio.ensure_future(client.receive(on_event, on_error=on_error, partition_id=partition_id,
                                                     starting_position="@latest", max_wait_time=1))
    try:
        error = await asyncio.wait_for(asyncio.shield(outcome), RECEIVER_WAIT)
    except asyncio.TimeoutError:
        raise StepFailed(f"no receiver could open on partition {partition_id} within {RECEIVER_WAIT:.0f}s") from None
    finally:
        await client.close()
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
    if error is not None:
        raise (consumer_group_error(config) if is_not_found(error) else hub_error(config, error))
    return f"`{config.hub_consumer_group}` may be read (a receiver opened on partition {partition_id}, nothing read)"


async def _store(config: EventHubConfiguration, credential: Any) -> str:
    """A probe blob written, read back and deleted, beside the checkpoints (the client lists only ``checkpoint/``
    and ``ownership/`` blobs)."""
    store = build_blob_store(config, credential, PROBE_OPTIONS)
    name = f"{config.namespace_host}/{config.hub_name}/{config.hub_consumer_group}/preflight-{uuid.uuid4()}".lower()
    payload = b"sekoia.io pre-flight check"
    try:
        async with store:
            blob = store.container_client.get_blob_client(name)  # the store's container client for its own blobs
            await blob.upload_blob(payload, overwrite=True)
            read = await (await blob.download_blob()).readall()
            await blob.delete_blob()
    except (AzureError, OSError) as error:
        raise storage_error(config, error) from None
    if read != payload:
        raise StepFailed("the probe blob read back differs from what was written")
    return (f"container `{config.storage_container_name}` at {storage_endpoint(config)}: a probe blob written, read "
            "back and deleted")
