"""The contract test of azure_eventhub/eventhub_internals.py: the installed azure-eventhub client still has the
internals the trigger reads (real client, no hub needed), and is the version the adapter was read from.

The client exposes neither its processor's owner id, a way to hand its load balancing a new partition list, nor a
way to close one partition's receiver: ``azure_eventhub.eventhub_internals`` reads them from private attributes. Without them the trigger degrades quietly (checkpoints no longer checked against ownership, new
partitions read only after a restart, the partitions listed twice at start, a stalled partition recovered only by
restarting the run), so an upgrade of the client that moves them must fail here.
"""

from __future__ import annotations

import asyncio
import importlib.metadata

from azure_eventhub import eventhub_internals
from azure_eventhub.checkpoints import LocalCheckpointStore
from azure_eventhub.clients import ConsumerClient, hub_namespace
from azure_eventhub.config import EventHubConfiguration
from azure_eventhub.eventhub_internals import client_owner_id, client_processors, forget_delivery_tags, reopen_partition
from azure_eventhub.partitions import PartitionWatch

# Nothing listens on port 9: the processor exists (and retries its first load-balancing round) all the same.
CONNECTION = "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=test;SharedAccessKey=dGVzdA==;EntityPath=logs"


def test_the_installed_client_is_the_version_the_adapter_was_read_from():
    assert importlib.metadata.version("azure-eventhub") == eventhub_internals.EVENTHUB_VERSION, (
        "azure-eventhub moved: check every member used in azure_eventhub/eventhub_internals.py, then update "
        "EVENTHUB_VERSION")


def test_the_public_namespace_is_the_one_the_client_is_built_with():
    config = EventHubConfiguration(hub_connection_string=CONNECTION, hub_name="logs")
    assert hub_namespace(config) == "127.0.0.1:9"
    # Names in another case: the public parser refuses them, the client takes them, the configuration's answer stands.
    lower = EventHubConfiguration(hub_connection_string=CONNECTION.replace("Endpoint=", "endpoint="), hub_name="logs")
    assert hub_namespace(lower) == "127.0.0.1:9"
    assert hub_namespace(EventHubConfiguration(fully_qualified_namespace="ns.servicebus.windows.net",
                                               hub_name="logs")) == "ns.servicebus.windows.net"


async def test_namespace_owner_id_and_partition_list_are_found_on_the_real_client(tmp_path):
    store = LocalCheckpointStore(tmp_path / "eventhub-checkpoints.json")
    client = ConsumerClient.from_connection_string(CONNECTION, consumer_group="$Default", checkpoint_store=store,
                                                   retry_total=0)
    client.known_partition_ids = ["0", "1"]  # as the start-up probe read them
    assert client._address.hostname == "127.0.0.1:9"  # what the processor writes in its records (hub_namespace)
    assert client_owner_id(client) is None  # not receiving yet

    async def on_batch(context, events):
        pass

    receiving = asyncio.create_task(client.receive_batch(on_batch, on_error=on_batch))
    try:
        for _ in range(500):  # the processor is registered at the receive task's first steps
            if client_processors(client):
                break
            await asyncio.sleep(0.01)
        owner_id = client_owner_id(client)
        assert isinstance(owner_id, str) and owner_id
        [processor] = client_processors(client)
        # Its first load-balancing round took the probe's ids: no hub answers on port 9, so it did not list them.
        for _ in range(500):
            if processor._ownership_manager.cached_parition_ids:
                break
            await asyncio.sleep(0.01)
        assert processor._ownership_manager.cached_parition_ids == ["0", "1"]
        # The processor claimed them under the namespace hub_namespace finds, with the owner id read from it.
        owned = await store.list_ownership("127.0.0.1:9", "logs", "$Default")
        assert owned and {record["owner_id"] for record in owned} == {owner_id}
        assert client.known_partition_ids is None  # once: the partition watch lists them again
        watch = PartitionWatch(client, store, {}, "-1", lambda message, level: None)
        assert watch._tell_load_balancing(["0", "1", "2"])
        assert processor._ownership_manager.cached_parition_ids == ["0", "1", "2"]
        # The stall watch's first step cancels a partition's task, as the processor does when it loses one.
        assert isinstance(processor._tasks, dict)
        assert reopen_partition(client, "9") is False  # not read: nothing to close
    finally:
        await asyncio.wait_for(client.close(), 30)
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        await store.close()


async def test_the_receivers_delivery_tags_are_found_and_forgotten(tmp_path):
    """The client's receiver keeps the tag of every delivery it took until it settles it, and it never settles an
    Event Hubs delivery (pre-settled, as the emulator sends them like the service): found where the adapter looks,
    growing with the events read, and emptied by it."""
    from emulators.eventhub.harness import EmulatorProcess
    from tests.eventhub_helpers import publish

    with EmulatorProcess(hubs={"logs": 2}) as emulator:
        await asyncio.to_thread(publish, emulator.connection_string, [b'{"n": %d}' % n for n in range(60)],
                                partition_id="0")
        store = LocalCheckpointStore(tmp_path / "eventhub-checkpoints.json")
        client = ConsumerClient.from_connection_string(emulator.connection_string, consumer_group="$Default",
                                                       eventhub_name="logs", checkpoint_store=store)
        read, held = [], []

        def tags_of(partition_id: str) -> set:
            [processor] = client_processors(client)
            return processor._consumers[partition_id]._handler._link._received_delivery_tags

        async def on_batch(context, events):
            if context.partition_id == "0" and events:
                read.extend(events)
                held.append(len(tags_of("0")))
                assert forget_delivery_tags(client, "0") is True
                assert not tags_of("0")

        receiving = asyncio.create_task(client.receive_batch(on_batch, max_batch_size=10, starting_position="-1"))
        try:
            for _ in range(1000):
                if len(read) >= 60:
                    break
                await asyncio.sleep(0.02)
            assert len(read) == 60
            # Every delivery's tag kept (none settled) until forgotten: counted once each, whatever the prefetch took.
            assert sum(held) == 60 and held[0] >= 10
            assert forget_delivery_tags(client, "9") is False  # not read: nothing to forget
        finally:
            await asyncio.wait_for(client.close(), 30)
            receiving.cancel()
