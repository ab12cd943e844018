"""Building the Event Hubs client, the credential and the checkpoint store, and checking them before consuming.

The client library hides most configuration mistakes: ``claim_ownership`` swallows every storage error, a
missing consumer group only shows as receive retries. So the trigger probes the store and the hub first, with
short retries, and turns what it finds into one ``ConfigurationError`` that names the field and the fix.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import re
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.eventhub import TransportType, parse_connection_string
from azure.eventhub.aio import CheckpointStore, EventHubConsumerClient
from azure.eventhub.exceptions import AuthenticationError, EventHubError
from azure_eventhub.checkpoints import LocalCheckpointStore
from azure_eventhub.config import EventHubConfiguration, connection_string_fields, proxy_settings
from connectors import proxy
from connectors.errors import ConfigurationError
from connectors.logs import describe_error
from connectors.secrets import reveal
from connectors.tls import ca_bundle

if TYPE_CHECKING:
    from azure_eventhub.blobstore import BlobStore

# Storage calls of the steady state: two quick retries (1 s, then 3 s), then the checkpoint writer's own backoff
# takes over. The library default (15 s, then 18 s, 21 s...) takes about 80 s before an error surfaces.
STORE_OPTIONS = {"retry_total": 2, "initial_backoff": 1, "increment_base": 2, "random_jitter_range": 1,
                 "connection_timeout": 5, "read_timeout": 15}
PROBE_OPTIONS = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10}
PROBE_ATTEMPTS = 3  # an unreachable store or namespace is tried this many times at start (1 s, 2 s apart)
# A receiving connection that hears nothing for this long is closed and opened again by the client: sent as the
# open frame's idle-time-out, which the service honours with empty frames on a quiet connection, so only a dead path
# stays silent (a NAT or firewall that dropped the connection's state without a reset). The client's default is no
# bound at all.
AMQP_IDLE_TIMEOUT = 30.0


def build_credential(config: EventHubConfiguration) -> Any:
    """The Entra ID credential (async), or None with a connection string."""
    kind = config.credential_kind
    if kind == "connection_string":
        return None
    from azure.identity.aio import (
        CertificateCredential,
        ClientSecretCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    # No instance discovery: it asks login.microsoftonline.com about the authority, which fails for a private one
    # (a proxy, an emulator) and which MSAL skips anyway for the clouds' own. The CA variables, as every TLS client
    # of the module (the HTTP client's own default was set at its import).
    sign_in = {"authority": config.authority_host, "disable_instance_discovery": True, "connection_verify": ca_bundle()}
    if config.http_proxy:  # the setting carries all of the trigger's connections (else the environment's applies)
        sign_in["proxies"] = {"http": reveal(config.http_proxy), "https": reveal(config.http_proxy)}
    if kind == "client_secret":
        return ClientSecretCredential(config.tenant_id, config.client_id, reveal(config.client_secret), **sign_in)
    if kind == "workload_identity":
        return WorkloadIdentityCredential(tenant_id=config.tenant_id, client_id=config.client_id, **sign_in)
    if kind == "certificate":
        try:
            return CertificateCredential(
                config.tenant_id,
                config.client_id,
                certificate_data=reveal(config.certificate).encode("utf-8"),  # type: ignore[union-attr]
                password=reveal(config.certificate_password),
                **sign_in,
            )
        except (ValueError, TypeError) as error:
            raise ConfigurationError(
                "certificate", f"not a usable PEM certificate with its private key ({type(error).__name__}); "
                "check `certificate_password` if the key is encrypted"
            ) from None
    identity = {"client_id": config.client_id} if config.client_id else {}
    return ManagedIdentityCredential(**identity, connection_verify=ca_bundle())


def _storage_kwargs(config: EventHubConfiguration) -> dict[str, Any]:
    """The store's proxy: ``http_proxy``, else the environment's (``HTTPS_PROXY``, ``NO_PROXY``, ``~/.netrc``) looked
    up once here: left to the environment, the storage client's aiohttp looks it up, in a thread, at every request
    (each checkpoint write). The trusted authorities are the store's transport's (``blobstore.StoreTransport``)."""
    found = proxy.proxy_for(storage_endpoint(config), reveal(config.http_proxy))
    # The store talks HTTPS (HTTP to an emulator): the same proxy carries both.
    return {"use_env_settings": False, **({"proxies": {"http": found, "https": found}} if found else {})}


def hub_proxy(config: EventHubConfiguration) -> str | None:
    """The hub's proxy: ``http_proxy``, else, over WebSockets only (a proxy cannot carry plain AMQP), the
    environment's for the address connected to."""
    if config.http_proxy:
        return reveal(config.http_proxy)
    if not config.use_websockets:
        return None
    address = config.custom_endpoint_address or f"sb://{config.namespace_host}"
    host = address.split("://", 1)[-1].split("/")[0]
    return proxy.proxy_for(f"https://{host}")


def build_blob_store(config: EventHubConfiguration, credential: Any, options: dict[str, Any]) -> BlobStore:
    from azure_eventhub.blobstore import BlobStore  # imported only when a storage account is configured

    kwargs = {**options, **_storage_kwargs(config)}
    container = config.storage_container_name or ""
    try:
        if config.storage_connection_string:
            return BlobStore.from_connection_string(reveal(config.storage_connection_string), container, **kwargs)
        return BlobStore(config.storage_account_url or "", container,
                         credential=None if config.storage_sas else credential, **kwargs)
    except (ValueError, TypeError) as error:
        field = "storage_connection_string" if config.storage_connection_string else "storage_account_url"
        raise ConfigurationError(field, f"not usable ({type(error).__name__}): check it was copied whole") from None


def build_store(config: EventHubConfiguration, state_dir: Path, credential: Any) -> CheckpointStore:
    if config.uses_storage:
        return build_blob_store(config, credential, STORE_OPTIONS)
    return LocalCheckpointStore(state_dir / "eventhub-checkpoints.json")


def tls_context() -> ssl.SSLContext:
    """The client's TLS settings, made once per set of trusted authorities: left to itself, the client loads
    certifi's bundle again for every connection (50-130 ms of CPU each: one per partition read, one per management
    request), and would ignore the CA variables every other client of the module follows (a TLS-inspecting proxy's
    private CA). Keyed on the bundle, so a changed CA variable is followed."""
    return _context_for(ca_bundle())


@functools.cache
def _context_for(bundle: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=bundle)


class ConsumerClient(EventHubConsumerClient):
    """The client, told once the partition ids the start-up probe has just read: its processor's first
    load-balancing round asks for them (a management round trip, about 0.4 s before the first read)."""

    known_partition_ids: list[str] | None = None

    async def get_partition_ids(self) -> list[str]:
        known, self.known_partition_ids = self.known_partition_ids, None  # later calls list them again
        if known is not None:
            return list(known)
        return await super().get_partition_ids()


def build_client(config: EventHubConfiguration, store: CheckpointStore | None, credential: Any,
                 retry_total: int = 3) -> ConsumerClient:
    kwargs: dict[str, Any] = {
        "consumer_group": config.hub_consumer_group,
        "eventhub_name": config.hub_name,
        "checkpoint_store": store,
        "load_balancing_interval": config.load_balancing_interval,
        "prefetch": config.prefetch,
        "retry_total": retry_total,
        "user_agent": "sekoiaio-connector",
        "idle_timeout": AMQP_IDLE_TIMEOUT,
        "ssl_context": tls_context(),
    }
    proxy_url = hub_proxy(config)
    # Explicit: with a custom endpoint the client would otherwise pick WebSockets.
    kwargs["transport_type"] = (TransportType.AmqpOverWebsocket if config.use_websockets or proxy_url
                                else TransportType.Amqp)
    if proxy_url:
        settings = proxy_settings(proxy_url)  # implies WebSockets
        # The aio WebSocket transport hands aiohttp "HOST:PORT", which it refuses (InvalidURL): with the scheme in
        # the host it gets a URL (azure-eventhub 5.15.1, _pyamqp/aio/_transport_async.py).
        settings["proxy_hostname"] = f"http://{settings['proxy_hostname']}"
        kwargs["http_proxy"] = settings
    if config.custom_endpoint_address:
        kwargs["custom_endpoint_address"] = config.custom_endpoint_address
    try:
        if config.hub_connection_string:
            return ConsumerClient.from_connection_string(reveal(config.hub_connection_string), **kwargs)
        return ConsumerClient(config.fully_qualified_namespace, credential=credential, **kwargs)
    except (ValueError, TypeError) as error:
        field = "hub_connection_string" if config.hub_connection_string else "fully_qualified_namespace"
        raise ConfigurationError(field, f"not usable ({type(error).__name__}): check it was copied whole") from None


def hub_namespace(config: EventHubConfiguration) -> str:
    """The namespace host the client's processor writes into checkpoint and ownership records: the one the client is
    built with, read from the connection string by the library's public parser (as the client reads it), else the
    configuration's. tests/test_eventhub_client_internals.py checks it against the processor's own records."""
    if config.hub_connection_string:
        try:
            return parse_connection_string(reveal(config.hub_connection_string)).fully_qualified_namespace
        except (ValueError, TypeError):  # the public parser is case-sensitive on names, the client is not
            pass
    return config.namespace_host


async def close_before(closables: Iterable[Any], deadline: float, floor: float = 0.5) -> None:
    """Close each in turn, all by ``deadline`` (event loop time; each gets at least ``floor`` seconds): a hanging
    storage account or hub must not hold the stop. Errors are left: closing after a failure must not hide it."""
    loop = asyncio.get_running_loop()
    for closable in closables:
        if closable is None:
            continue
        try:
            await asyncio.wait_for(closable.close(), max(floor, deadline - loop.time()))
        except Exception:  # noqa: BLE001,S110 - best effort, the process is stopping
            pass


# -- start-up probes ----------------------------------------------------------------------------------------------


def _storage_field(config: EventHubConfiguration) -> str:
    return "storage_connection_string" if config.storage_connection_string else "storage_account_url"


def storage_endpoint(config: EventHubConfiguration) -> str:
    if config.storage_account_url:
        return config.storage_account_url.split("?", 1)[0]  # never a SAS token in a message
    fields = connection_string_fields(reveal(config.storage_connection_string) or "")
    if "blobendpoint" in fields:
        return fields["blobendpoint"]
    return f"https://{fields.get('accountname', '?')}.blob.{fields.get('endpointsuffix', 'core.windows.net')}"


def _error_code(error: BaseException) -> str:
    code = getattr(error, "error_code", None) or ""
    return str(getattr(code, "value", code))


def storage_error(config: EventHubConfiguration, error: BaseException) -> ConfigurationError:
    """The one message a person needs for a store that cannot be used."""
    field = _storage_field(config)
    container = config.storage_container_name
    code = _error_code(error)
    endpoint = storage_endpoint(config)
    refused = proxy.refusal(error, endpoint, reveal(config.http_proxy), service_header="x-ms-request-id")
    if refused is not None:  # the proxy's answer, not the storage account's
        return refused.configuration_error("http_proxy" if config.http_proxy else None)
    if isinstance(error, ResourceNotFoundError) or code == "ContainerNotFound":
        return ConfigurationError(
            "storage_container_name",
            f"container `{container}` does not exist in the storage account at {endpoint}: create it "
            "(storage account > Containers) or correct the name; the trigger does not create it, so a typo "
            "cannot silently start over without checkpoints",
        )
    status = getattr(error, "status_code", None)
    if isinstance(error, ClientAuthenticationError) or status in (401, 403):
        connection = (reveal(config.storage_connection_string) or "").lower()
        if "accountkey=" in connection:
            fix = "check the account key: copy the connection string again from storage account > Access keys"
        elif "sharedaccesssignature=" in connection:
            fix = "the SAS may have expired or lack read, list and write permissions on the container"
        elif config.storage_sas:
            fix = "the SAS token of storage_account_url may have expired or lack read, list and write permissions"
        else:
            fix = (f"give {identity_name(config)} the role Storage Blob Data Contributor (scope: the container "
                   f"`{container}` or its storage account; storage account > Access control (IAM) > Add role "
                   "assignment)")
        return ConfigurationError(
            field, f"the storage account at {endpoint} refused the request ({code or f'HTTP {status}'}): {fix}"
        )
    if isinstance(error, (ServiceRequestError, ServiceResponseError, asyncio.TimeoutError, OSError)):
        return ConfigurationError(
            field,
            f"the storage account at {endpoint} is unreachable ({describe_error(error)}): check BlobEndpoint / "
            "AccountName and that this network may reach it (firewall, proxy)",
        )
    return ConfigurationError(field, f"the checkpoint store cannot be used ({describe_error(error)})")


async def _import_then_probe_store(config: EventHubConfiguration, credential: Any) -> None:
    if config.uses_storage:
        # The Blob store's import (0.15-0.3 s of CPU, once) off the loop, which meanwhile carries the hub probe's
        # handshake (mostly waits): on the loop it would hold that handshake back as long.
        await asyncio.to_thread(importlib.import_module, "azure_eventhub.blobstore")
    await probe_store(config, credential)


async def probe_store(config: EventHubConfiguration, credential: Any) -> None:
    """List checkpoints once with a fast-failing client: container present, credentials valid, endpoint reachable."""
    if not config.uses_storage:
        return
    for attempt in range(PROBE_ATTEMPTS):
        probe = build_blob_store(config, credential, PROBE_OPTIONS)
        try:
            async with probe:
                await asyncio.wait_for(
                    probe.list_checkpoints(config.namespace_host, config.hub_name, config.hub_consumer_group), 20
                )
            return
        except (ServiceRequestError, ServiceResponseError, asyncio.TimeoutError) as error:
            if attempt + 1 == PROBE_ATTEMPTS:
                raise storage_error(config, error) from None
            await asyncio.sleep(2**attempt)
        except (AzureError, OSError) as error:
            raise storage_error(config, error) from None


def _hub_field(config: EventHubConfiguration) -> str:
    return "hub_connection_string" if config.hub_connection_string else "fully_qualified_namespace"


def _condition(error: BaseException) -> str:
    inner = getattr(error, "error", None)
    condition = getattr(inner, "condition", None) or getattr(error, "condition", None)
    value = getattr(condition, "value", condition)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value or "")


def is_not_found(error: BaseException) -> bool:
    text = str(error).lower()
    return "not-found" in _condition(error) or "status code: 404" in text or "could not be found" in text


def is_auth_error(error: BaseException) -> bool:
    return isinstance(error, (AuthenticationError, ClientAuthenticationError)) or "unauthorized" in _condition(error)


def credential_error(config: EventHubConfiguration, error: BaseException) -> ConfigurationError:
    if config.credential_kind == "connection_string":
        return ConfigurationError(
            "hub_connection_string",
            f"the Event Hubs namespace {config.namespace_host} refused the key (authentication failed): copy the "
            "connection string again from event hub > Shared access policies, with the Listen claim",
        )
    if is_missing_role(error):
        return ConfigurationError("client_id", f"{identity_name(config)} signed in but may not read event hub "
                                               f"`{config.hub_name}` of {config.namespace_host}: {RECEIVER_GRANT}"
                                               f" (scope: the event hub `{config.hub_name}` or the namespace)")
    field = {"client_secret": "client_secret", "certificate": "certificate"}.get(config.credential_kind, "client_id")
    refused = hub_refusal(error)
    if refused:
        if "ExpiredToken" in refused:
            fix = ("the token had expired when it reached the namespace, fresh from the authority: the authority's "
                   "clock is off (a private AZURE_AUTHORITY_HOST?) or something in between held the token")
        elif "InvalidAudience" in refused:
            fix = "the token was issued for another service: check AZURE_AUTHORITY_HOST or the proxy in between"
        else:
            fix = "check tenant_id (the namespace's tenant), `cloud` and AZURE_AUTHORITY_HOST if set"
        return ConfigurationError(
            field,
            f"the Event Hubs namespace {config.namespace_host} refused the Entra ID token of "
            f"{identity_name(config)} ({refused}): {fix}",
        )
    aadsts = re.search(r"AADSTS\d+", str(error))
    return ConfigurationError(
        field,
        f"Entra ID refused the credential or it may not read {config.namespace_host} ("
        f"{describe_error(error)}{f' {aadsts.group(0)}' if aadsts else ''}): "
        "check tenant_id, client_id and the secret or certificate, and give the application the role "
        "Azure Event Hubs Data Receiver",
    )


RECEIVER_GRANT = ("give it the role Azure Event Hubs Data Receiver (Event Hubs namespace > Access control (IAM) > "
                  "Add role assignment)")


def hub_refusal(error: BaseException) -> str | None:
    """The status and description of a token the service refused ($cbs or $management), e.g. `401 ExpiredToken:
    The token is expired...`; the description names no secret."""
    # "Status code: 401, Description: "..."" ($management) or "Status code: 401\nDescription: ..." ($cbs)
    match = re.search(r'Status code: (\d+)[.,]?\s+Description: "?([^"\n]+)', str(error))
    return f"{match.group(1)} {match.group(2).strip()}" if match else None


def is_missing_role(error: BaseException) -> bool:
    """The service knew the identity but it lacks the Listen claim: an RBAC role is missing, the credential is fine."""
    return "claim(s) are required" in str(error)


def identity_name(config: EventHubConfiguration) -> str:
    if config.credential_kind == "managed_identity":
        return f"the managed identity{f' {config.client_id}' if config.client_id else ''}"
    return f"the application {config.client_id}"


def hub_error(config: EventHubConfiguration, error: BaseException) -> ConfigurationError:
    if is_auth_error(error):
        return credential_error(config, error)
    if is_not_found(error):
        return ConfigurationError(
            "hub_name",
            f"event hub `{config.hub_name}` does not exist in namespace {config.namespace_host}: check the name "
            "(Event Hubs namespace > Event Hubs)",
        )
    return ConfigurationError(
        _hub_field(config),
        f"the Event Hubs namespace {config.namespace_host} is unreachable ({describe_error(error)}): check the "
        "endpoint and that this network may reach it (port 5671, or 443 with WebSockets / a proxy)",
    )


def consumer_group_error(config: EventHubConfiguration) -> ConfigurationError:
    return ConfigurationError(
        "hub_consumer_group",
        f"consumer group `{config.hub_consumer_group}` does not exist on event hub `{config.hub_name}`: create it "
        "(event hub > Consumer groups) or use `$Default`",
    )


async def probe_hub(config: EventHubConfiguration, credential: Any) -> dict[str, Any]:
    """The hub's properties (partition ids), or the ConfigurationError explaining why they cannot be read.

    A short-lived client with one retry: the long-lived one retries 3 times with backoff (about 20 s), too
    long to say that a key is wrong.
    """
    client = build_client(config, None, credential, retry_total=1)
    try:
        return await asyncio.wait_for(client.get_eventhub_properties(), 60)
    except (EventHubError, AzureError, asyncio.TimeoutError, OSError) as error:
        raise hub_error(config, error) from None
    finally:
        await client.close()


async def probe(config: EventHubConfiguration, credential: Any) -> dict[str, Any]:
    """Both probes at once, the hub's first: its properties, or the first ConfigurationError (the hub's before the
    store's)."""
    hub = asyncio.ensure_future(probe_hub(config, credential))
    await asyncio.sleep(0)  # the hub probe's first step: up to its connection
    store = asyncio.ensure_future(_import_then_probe_store(config, credential))
    try:
        properties = await hub
        await store
        return properties
    finally:
        for task in (hub, store):
            task.cancel()  # left running only when the other failed, or the caller is cancelled (stopping)
        await asyncio.gather(hub, store, return_exceptions=True)
