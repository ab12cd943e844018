"""The Azurite helper: a free port, containers, the checkpoint store against it, restart on the same port."""

import asyncio

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

from emulators.azurite import Azurite, BlobAdmin


def test_checkpoints_survive_a_restart_on_the_same_port(tmp_path):
    azurite = Azurite(location=tmp_path / "azurite").start()
    try:
        azurite.create_container("checkpoints")
        azurite.create_container("checkpoints")  # idempotent

        async def write_and_list():
            async with BlobCheckpointStore.from_connection_string(azurite.connection_string, "checkpoints") as store:
                await store.update_checkpoint({"fully_qualified_namespace": "ns", "eventhub_name": "hub",
                                               "consumer_group": "$Default", "partition_id": "3", "offset": "1024",
                                               "sequence_number": 7})

        asyncio.run(write_and_list())
        port = azurite.port
        azurite.restart(down_for=0.5)
        assert azurite.port == port and azurite.running
        blobs = azurite.admin.list_blobs("checkpoints", prefix="ns/hub/$default/checkpoint/")
        assert blobs == [{"name": "ns/hub/$default/checkpoint/3",
                          "metadata": {"offset": "1024", "sequencenumber": "7"}}]
        azurite.stop()
        with pytest.raises(ServiceRequestError):
            BlobAdmin(azurite.account_url, timeout=2).list_blobs("checkpoints")
    finally:
        azurite.stop()
