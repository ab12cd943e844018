"""The Azurite helper: a free port, containers, the checkpoint store against it, restart on the same port."""

import asyncio

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

from emulators.azurite import Azurite, BlobAdmin, connection_string
from emulators.netfault import FaultProxy
from tests.support.private_ca import private_ca_files


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


def test_the_store_verifies_tls_with_one_context_made_once(tmp_path, monkeypatch):
    """The trigger's Blob store over HTTPS (a private CA, named as every TLS client of the module takes it): its
    requests are verified against that CA, with a TLS context made when the store is built, not one per request
    (azure-core's transport given a CA file parses the whole bundle at every checkpoint write)."""
    import ssl

    from azure_eventhub import clients
    from azure_eventhub.config import EventHubConfiguration
    from connectors.trigger import parse_configuration

    certificate, ca_file = private_ca_files(tmp_path)
    azurite = Azurite(certificate=certificate, ca_file=ca_file).start()
    try:
        azurite.create_container("checkpoints")
        config = parse_configuration(EventHubConfiguration, {
            "hub_connection_string": "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;"
                                     "SharedAccessKey=k3y-value=;EntityPath=logs",
            "hub_name": "logs", "storage_connection_string": azurite.connection_string,
            "storage_container_name": "checkpoints"})
        checkpoint = {"fully_qualified_namespace": "ns", "eventhub_name": "logs", "consumer_group": "$default",
                      "offset": "1024"}
        made = []
        create_default_context = ssl.create_default_context

        def counted(*args, **kwargs):
            made.append(kwargs.get("cafile"))
            return create_default_context(*args, **kwargs)

        async def write(count: int) -> list[dict]:
            store = clients.build_blob_store(config, None, {**clients.STORE_OPTIONS, "retry_total": 0})
            async with store:
                made.clear()
                for sequence in range(count):
                    await store.update_checkpoint(dict(checkpoint, partition_id=str(sequence % 2),
                                                       sequence_number=sequence))
                return await store.list_checkpoints("ns", "logs", "$default")

        monkeypatch.setattr(ssl, "create_default_context", counted)
        for name in ("SSL_CERT_FILE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        listed = asyncio.run(write(6))
        assert made == []
        assert sorted((item["partition_id"], item["sequence_number"]) for item in listed) == [("0", 4), ("1", 5)]
        # Verification is on: with certifi's authorities alone, the private CA's certificate is refused.
        monkeypatch.delenv("REQUESTS_CA_BUNDLE")
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(write(1))
    finally:
        azurite.stop()


def test_the_trigger_store_makes_one_tls_connection_for_its_many_checkpoints(tmp_path, monkeypatch):
    """The trigger's store over HTTPS, with the private CA named as every TLS client of the module takes it
    (REQUESTS_CA_BUNDLE): checkpoint writes and listings reuse the connection. Given the CA as a file, the storage
    client made an SSL context per request (the bundle parsed again, a megabyte of native memory each) and aiohttp,
    pooling by context, a new TLS connection per request: hundreds alive at several checkpoints a second."""
    from azure_eventhub.clients import STORE_OPTIONS, build_blob_store
    from azure_eventhub.config import EventHubConfiguration

    cert_file, ca_file = private_ca_files(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    with Azurite(certificate=cert_file, ca_file=ca_file) as azurite, \
            FaultProxy("127.0.0.1", azurite.port) as proxy:
        azurite.create_container("checkpoints")
        config = EventHubConfiguration(
            hub_connection_string="Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;"
                                  "SharedAccessKey=dGVzdA==;EntityPath=logs",
            storage_connection_string=connection_string("127.0.0.1", proxy.port, scheme="https"),
            storage_container_name="checkpoints")

        async def checkpoint_often() -> list[dict]:
            async with build_blob_store(config, None, STORE_OPTIONS) as store:
                for number in range(20):
                    await store.update_checkpoint({
                        "fully_qualified_namespace": "ns", "eventhub_name": "logs", "consumer_group": "$Default",
                        "partition_id": str(number % 4), "offset": str(number * 100), "sequence_number": number})
                return await store.list_checkpoints("ns", "logs", "$Default")

        checkpoints = asyncio.run(checkpoint_often())
        assert sorted(int(checkpoint["sequence_number"]) for checkpoint in checkpoints) == [16, 17, 18, 19]
        assert proxy.stats.accepted == 1
