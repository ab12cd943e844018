"""Sovereign clouds and proxies: the trigger set to `cloud: usgov` with a namespace and a storage account given by
name reaches Azure US Government's real host names (login.microsoftonline.us, NAME.servicebus.usgovcloudapi.net,
NAME.blob.core.usgovcloudapi.net) through an HTTP CONNECT proxy that routes them to the emulators, whose
certificates carry those names: the hub over WebSockets, the store and Entra ID all through the proxy."""

from __future__ import annotations

import pytest

from tests.eventhub_entra_helpers import NAMESPACE, RECEIVER, EntraRig
from tests.eventhub_helpers import compare, ids_of, records_with_ids, terminate, wait_until
from tests.support.connect_proxy import ConnectProxy

CLOUD_NAMES = {
    "usgov": ("login.microsoftonline.us", "servicebus.usgovcloudapi.net", "blob.core.usgovcloudapi.net"),
    "china": ("login.chinacloudapi.cn", "servicebus.chinacloudapi.cn", "blob.core.chinacloudapi.cn"),
}


pytestmark = pytest.mark.usefixtures("reset_fatal")


@pytest.mark.parametrize("cloud, proxy_from", [("usgov", "environment"), ("china", "setting")])
def test_a_sovereign_cloud_through_a_proxy_reads_and_checkpoints(tmp_path, cloud, proxy_from):
    login, namespaces, blobs = CLOUD_NAMES[cloud]
    entra = EntraRig(tmp_path / "entra", hub_names=(f"*.{namespaces}", f"*.{blobs}"), tls_names=[login])
    try:
        with entra.hub_stack(tmp_path / "hub", roles={entra.client_id: RECEIVER}, partitions=2) as stack:
            # The configured proxy asks for a password (each client must send it); the environment's does not.
            credentials = ("sekoia", "proxy-pass-7f3a") if proxy_from == "setting" else None
            routes = {login: entra.info["port"], blobs: stack.azurite.port,
                      namespaces: int(stack.emulator.info["websocket_endpoint"].rsplit(":", 1)[1])}
            with ConnectProxy(auth=credentials, routes=routes) as proxy:
                records = records_with_ids(100, cloud)
                stack.publish_envelopes(records, per_envelope=10)  # 5 envelopes per partition
                config = entra.config(stack, websockets=True, cloud=cloud, storage_account_url="devstoreaccount1")
                for name in ("custom_endpoint_address", "storage_connection_string"):
                    config.pop(name)
                if proxy_from == "setting":
                    config["http_proxy"] = proxy.url_with_credentials
                env = entra.env(stack, config)
                env.pop("AZURE_AUTHORITY_HOST")  # the cloud's authority, reached through the proxy
                if proxy_from == "environment":
                    env.update(HTTPS_PROXY=proxy.url_with_credentials, NO_PROXY="127.0.0.1,localhost")
                proc = stack.start_process(config, env=env)
                try:
                    assert wait_until(lambda: stack.checkpoints() == {"0": 4, "1": 4} or proc.poll() is not None,
                                      90), stack.checkpoints()
                finally:
                    assert terminate(proc) == 0
            assert compare(ids_of(records), stack.delivered_ids())["lost"] == 0
            # Checkpoints under the cloud's namespace name, and each of the three services reached by its name.
            names = [blob["name"] for blob in stack.azurite.admin.list_blobs("checkpoints")]
            assert all(name.startswith(f"{NAMESPACE}.{namespaces}/") for name in names), names
            hosts = {tunnel.rsplit(":", 1)[0] for tunnel in proxy.tunnels}
            assert {login, f"{NAMESPACE}.{namespaces}", f"devstoreaccount1.{blobs}"} <= hosts, hosts
            if credentials:
                assert credentials[1] not in str(stack.logs())
    finally:
        entra.close()
