"""Configuration: Sekoia's field names, Entra ID, starting positions, and errors that name the field."""

from datetime import UTC, datetime

import pytest

from azure_eventhub.config import EventHubConfiguration, parse_starting_position, proxy_settings
from connectors.errors import ConfigurationError
from connectors.trigger import parse_configuration

HUB = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=k3y-value=;EntityPath=logs"
STORAGE = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"


def parse(**values) -> EventHubConfiguration:
    return parse_configuration(EventHubConfiguration, values)  # type: ignore[return-value]


def field_of(**values) -> str:
    with pytest.raises(ConfigurationError) as raised:
        parse(**values)
    return raised.value.field


def test_sekoia_field_names_carry_over():
    config = parse(hub_connection_string=HUB, hub_name="logs", hub_consumer_group="sekoia",
                   storage_connection_string=STORAGE, storage_container_name="checkpoints", chunk_size=200,
                   intake_key="k", intake_server="https://intake.sekoia.io")
    assert config.max_batch_size == 200 and config.uses_storage
    assert config.namespace_host == "ns.servicebus.windows.net"
    assert config.credential_kind == "connection_string"


def test_hub_name_defaults_to_the_entity_path_and_must_agree_with_it():
    assert parse(hub_connection_string=HUB).hub_name == "logs"
    assert field_of(hub_connection_string=HUB, hub_name="other") == "hub_name"


def test_blank_values_are_absent_and_the_default_group_is_used():
    config = parse(hub_connection_string=HUB, hub_consumer_group="", storage_connection_string=" ",
                   storage_container_name="")
    assert config.hub_consumer_group == "$Default" and not config.uses_storage


@pytest.mark.parametrize(("values", "field"), [
    ({}, "hub_connection_string"),
    ({"hub_connection_string": "not a connection string"}, "hub_connection_string"),
    ({"hub_connection_string": HUB.replace(";EntityPath=logs", "")}, "hub_name"),
    ({"hub_connection_string": HUB, "storage_connection_string": STORAGE}, "storage_container_name"),
    ({"hub_connection_string": HUB, "storage_container_name": "c"}, "storage_connection_string"),
    ({"hub_connection_string": HUB, "storage_connection_string": "UseDevelopmentStorage=true",
      "storage_container_name": "c"}, "storage_connection_string"),
    ({"hub_connection_string": HUB, "starting_position": "yesterday"}, "starting_position"),
    ({"hub_connection_string": HUB, "http_proxy": "proxy.local"}, "http_proxy"),
    ({"fully_qualified_namespace": "ns.servicebus.windows.net", "hub_name": "h", "client_secret": "s"}, "tenant_id"),
    ({"hub_connection_string": HUB, "max_batch_size": 0}, "max_batch_size"),
])
def test_errors_name_the_field(values, field):
    assert field_of(**values) == field


def test_entra_credentials():
    base = {"fully_qualified_namespace": "ns.servicebus.windows.net", "hub_name": "h"}
    assert parse(**base).credential_kind == "managed_identity"
    assert parse(**base, tenant_id="t", client_id="c", client_secret="s").credential_kind == "client_secret"
    assert parse(**base, tenant_id="t", client_id="c", certificate="-----BEGIN").credential_kind == "certificate"
    config = parse(**base, storage_account_url="https://acct.blob.core.windows.net", storage_container_name="c")
    assert config.uses_storage and config.namespace_host == "ns.servicebus.windows.net"


def test_max_wait_time_sets_the_delivery_batch_age_and_categories_accept_a_string():
    config = parse(hub_connection_string=HUB, max_wait_time=5, categories="SignInLogs, AuditLogs")
    assert config.batch_max_age_seconds == 5
    assert config.categories == ["SignInLogs", "AuditLogs"]


def test_starting_positions():
    assert parse_starting_position("earliest") == "-1"
    assert parse_starting_position("LATEST") == "@latest"
    assert parse_starting_position("2026-01-31T08:00:00Z") == datetime(2026, 1, 31, 8, tzinfo=UTC)
    assert parse_starting_position("2026-01-31T08:00:00").tzinfo is UTC


def test_proxy_settings_and_secret_fields():
    assert proxy_settings("http://user:p%40ss@proxy:3128") == {
        "proxy_hostname": "proxy", "proxy_port": 3128, "username": "user", "password": "p@ss"}
    for name in ("hub_connection_string", "storage_connection_string", "client_secret", "certificate",
                 "intake_key", "certificate_password"):
        assert name in EventHubConfiguration.secret_fields


def test_secret_values_never_appear_in_errors():
    with pytest.raises(ConfigurationError) as raised:
        parse(hub_connection_string="Endpoint=sb://x/;SharedAccessKeyName=n;SharedAccessKey=TOPSECRETKEY;EntityPath=a",
              hub_name="b")
    assert "TOPSECRETKEY" not in str(raised.value)


def test_clients_for_entra_websockets_and_proxy(tmp_path):
    from azure.eventhub import TransportType
    from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential

    from azure_eventhub.checkpoints import LocalCheckpointStore
    from azure_eventhub.clients import build_client, build_credential, build_store

    base = {"fully_qualified_namespace": "ns.servicebus.windows.net", "hub_name": "h"}
    config = parse(**base, tenant_id="t", client_id="c", client_secret="s", http_proxy="http://u:p@proxy:3128",
                   storage_account_url="https://acct.blob.core.windows.net", storage_container_name="cont")
    credential = build_credential(config)
    assert isinstance(credential, ClientSecretCredential)
    store = build_store(config, tmp_path, credential)
    client = build_client(config, store, credential)
    assert client._config.transport_type == TransportType.AmqpOverWebsocket
    # The scheme in the host: the aio WebSocket transport makes the proxy URL "HOST:PORT" from these.
    assert client._config.http_proxy == {"proxy_hostname": "http://proxy", "proxy_port": 3128, "username": "u",
                                         "password": "p"}
    assert client.eventhub_name == "h" and client._address.hostname == "ns.servicebus.windows.net"
    assert store.container_client.url == "https://acct.blob.core.windows.net/cont"

    assert isinstance(build_credential(parse(**base)), ManagedIdentityCredential)
    websockets = build_client(parse(hub_connection_string=HUB, use_websockets=True), None, None)
    assert websockets._config.transport_type == TransportType.AmqpOverWebsocket
    local = build_store(parse(hub_connection_string=HUB), tmp_path, None)
    assert isinstance(local, LocalCheckpointStore)
    local._instance.release()
    with pytest.raises(ConfigurationError) as raised:
        build_credential(parse(**base, tenant_id="t", client_id="c", certificate="not a pem"))
    assert raised.value.field == "certificate"


def test_the_store_proxy_is_looked_up_once_from_the_environment(monkeypatch):
    """The storage client must not read the environment (and ~/.netrc) in a thread at every checkpoint write: the
    proxy is looked up when the store is built, and the configured one wins."""
    from azure_eventhub.clients import _storage_kwargs

    storage = {"storage_connection_string": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Zm9v;"
                                            "EndpointSuffix=core.windows.net", "storage_container_name": "c"}
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # No CA file: the store's transport trusts the module's authorities through one TLS context
    # (tests/test_eventhub_azurite.py).
    fixed = {"use_env_settings": False}
    assert _storage_kwargs(parse(hub_connection_string=HUB, **storage)) == fixed
    monkeypatch.setenv("HTTPS_PROXY", "http://u:p@envproxy:8080")
    proxy = "http://u:p@envproxy:8080"
    assert _storage_kwargs(parse(hub_connection_string=HUB, **storage)) == {
        **fixed, "proxies": {"http": proxy, "https": proxy}}
    configured = "http://proxy.local:3128"
    assert _storage_kwargs(parse(hub_connection_string=HUB, http_proxy=configured, **storage))["proxies"] == {
        "http": configured, "https": configured}
    monkeypatch.setenv("NO_PROXY", "acct.blob.core.windows.net")
    assert _storage_kwargs(parse(hub_connection_string=HUB, **storage)) == fixed


async def test_the_clients_tls_trusts_the_authorities_of_the_module_wide_variables(tmp_path, monkeypatch):
    """A hub behind a TLS-inspecting proxy: its private CA, named the way delivery and Office 365 take it, is
    trusted by the Event Hubs client's TLS context too (and certifi's bundle alone would refuse it), also when the
    variable changes after a first context was made."""
    import asyncio
    import ssl

    from azure_eventhub.clients import tls_context
    from tests.support.private_ca import private_ca

    server_context, ca_file = private_ca(tmp_path)

    async def greet(reader, writer):
        writer.write(b"AMQP")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]

    async def handshake() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls_context())
        try:
            return await reader.read(4)
        finally:
            writer.close()

    try:
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        assert await handshake() == b"AMQP"
    finally:
        server.close()
        await server.wait_closed()


ENTRA = {"tenant_id": "t", "client_id": "c", "client_secret": "s", "hub_name": "logs"}


@pytest.mark.parametrize("cloud, namespace, storage, authority", [
    ("public", "ns.servicebus.windows.net", "https://acct.blob.core.windows.net", "https://login.microsoftonline.com"),
    ("usgov", "ns.servicebus.usgovcloudapi.net", "https://acct.blob.core.usgovcloudapi.net",
     "https://login.microsoftonline.us"),
    ("china", "ns.servicebus.chinacloudapi.cn", "https://acct.blob.core.chinacloudapi.cn",
     "https://login.chinacloudapi.cn"),
])
def test_one_cloud_setting_gives_the_suffixes_and_the_authority(monkeypatch, cloud, namespace, storage, authority):
    monkeypatch.delenv("AZURE_AUTHORITY_HOST", raising=False)
    config = parse(**ENTRA, cloud=cloud, fully_qualified_namespace="ns", storage_account_url="acct",
                   storage_container_name="checkpoints")
    assert (config.namespace_host, config.storage_account_url, config.authority_host) == (namespace, storage, authority)
    # Full names are kept as given; AZURE_AUTHORITY_HOST (a private authority) wins over the cloud's.
    assert parse(**ENTRA, cloud=cloud, fully_qualified_namespace=namespace).namespace_host == namespace
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "https://login.example.com/")
    assert config.authority_host == "https://login.example.com"


def test_cloud_names_of_the_azure_tools_are_accepted_and_a_namespace_of_another_cloud_is_refused():
    assert parse(**ENTRA, cloud="AzureUSGovernment", fully_qualified_namespace="ns").cloud == "usgov"
    assert parse(**ENTRA, cloud="AzureChinaCloud", fully_qualified_namespace="ns").cloud == "china"
    assert parse(**ENTRA, cloud="", fully_qualified_namespace="ns").cloud == "public"
    with pytest.raises(ConfigurationError) as raised:
        parse(**ENTRA, cloud="usgov", fully_qualified_namespace="ns.servicebus.windows.net")
    assert raised.value.field == "fully_qualified_namespace" and "`public`" in str(raised.value)
    assert field_of(**ENTRA, cloud="mars", fully_qualified_namespace="ns") == "cloud"


def test_a_storage_url_with_a_sas_token_needs_no_entra_id_and_never_shows_its_signature():
    from azure_eventhub.clients import storage_endpoint

    sas_url = "https://acct.blob.core.windows.net?sv=2024-11-04&ss=b&sp=rwl&sig=c2VjcmV0LXNpZw%3D%3D"
    config = parse(hub_connection_string=HUB, storage_account_url=sas_url, storage_container_name="checkpoints")
    assert config.storage_sas and config.uses_storage
    assert storage_endpoint(config) == "https://acct.blob.core.windows.net"
    assert "storage_account_url" in EventHubConfiguration.secret_fields
    assert field_of(hub_connection_string=HUB, storage_account_url="https://acct.blob.core.windows.net",
                    storage_container_name="c") == "storage_account_url"  # neither SAS nor Entra ID


def test_workload_identity_is_used_where_kubernetes_projects_a_token(monkeypatch, tmp_path):
    from azure.identity.aio import ManagedIdentityCredential, WorkloadIdentityCredential

    from azure_eventhub.clients import build_credential

    values = {"fully_qualified_namespace": "ns", "hub_name": "logs", "tenant_id": "t", "client_id": "c"}
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    assert parse(**values).credential_kind == "managed_identity"
    assert isinstance(build_credential(parse(**values)), ManagedIdentityCredential)
    token_file = tmp_path / "token"
    token_file.write_text("a.b.c")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    assert parse(**values).credential_kind == "workload_identity"
    assert isinstance(build_credential(parse(**values)), WorkloadIdentityCredential)


def test_the_client_goes_to_the_custom_endpoint_with_the_transport_asked_for():
    from azure.eventhub import TransportType

    from azure_eventhub.clients import build_client

    base = {"fully_qualified_namespace": "ns", "hub_name": "logs", "tenant_id": "t", "client_id": "c",
            "client_secret": "s", "custom_endpoint_address": "sb://10.1.2.3:5671"}
    amqp = build_client(parse(**base), None, credential=object())
    assert amqp._config.transport_type == TransportType.Amqp  # not WebSockets, the client's default with it
    assert amqp._config.custom_endpoint_hostname == "10.1.2.3" and amqp._config.connection_port == 5671
    websockets = build_client(parse(**base, use_websockets=True), None, credential=object())
    assert websockets._config.transport_type == TransportType.AmqpOverWebsocket


def test_the_hub_takes_the_environments_proxy_over_websockets_only_and_honours_no_proxy(monkeypatch):
    from azure_eventhub.clients import hub_proxy

    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://envproxy:8080")
    websockets = {"fully_qualified_namespace": "ns", "hub_name": "logs", "use_websockets": True}
    assert hub_proxy(parse(**websockets)) == "http://envproxy:8080"
    assert hub_proxy(parse(**{**websockets, "use_websockets": False})) is None  # a proxy cannot carry AMQP
    assert hub_proxy(parse(**websockets, http_proxy="http://set:3128")) == "http://set:3128"
    monkeypatch.setenv("NO_PROXY", ".servicebus.windows.net")
    assert hub_proxy(parse(**websockets)) is None
    assert hub_proxy(parse(**websockets, custom_endpoint_address="sb://gateway.example.com")) == \
        "http://envproxy:8080"  # the address connected to decides
