"""Configuration of the "Consume EventHub messages" trigger.

Field names of Sekoia's existing trigger are kept (``hub_connection_string``, ``hub_name``, ``hub_consumer_group``,
``storage_connection_string``, ``storage_container_name``, ``chunk_size``) so playbooks carry over.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, NamedTuple
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.errors import ConfigurationError
from connectors.secrets import reveal
from connectors.trigger import CollectorConfiguration

DEFAULT_CONSUMER_GROUP = "$Default"


class CloudEndpoints(NamedTuple):
    authority: str  # the Entra ID authority host
    namespace_suffix: str  # Event Hubs namespaces: NAME.<suffix>
    storage_suffix: str  # storage accounts: NAME.blob.<suffix> (a connection string's EndpointSuffix)


# The tokens' audiences are the same in every cloud: https://eventhubs.azure.net (the client's fixed scope) and
# https://storage.azure.com.
CLOUDS: dict[str, CloudEndpoints] = {
    "public": CloudEndpoints("https://login.microsoftonline.com", "servicebus.windows.net", "core.windows.net"),
    "usgov": CloudEndpoints("https://login.microsoftonline.us", "servicebus.usgovcloudapi.net",
                            "core.usgovcloudapi.net"),
    "china": CloudEndpoints("https://login.chinacloudapi.cn", "servicebus.chinacloudapi.cn", "core.chinacloudapi.cn"),
}
_CLOUD_ALIASES = {"azurecloud": "public", "azureusgovernment": "usgov", "usgovernment": "usgov",
                  "azurechinacloud": "china", "mooncake": "china", "fairfax": "usgov"}


def connection_string_fields(value: str) -> dict[str, str]:
    """``Name=value;...`` of an Event Hubs or a storage connection string, names lower-cased."""
    fields = {}
    for part in value.strip().strip(";").split(";"):
        name, sep, field_value = part.partition("=")
        if sep:
            fields[name.strip().lower()] = field_value.strip()
    return fields


def _without_batch_age(schema: dict) -> None:
    # `max_wait_time`, the name Sekoia's trigger has always used, sets the batch age: the arguments show it alone.
    schema["properties"].pop("batch_max_age_seconds", None)


class EventHubConfiguration(CollectorConfiguration):
    model_config = ConfigDict(json_schema_extra=_without_batch_age)

    # -- the hub: a connection string (SAS key with the Listen claim) or Entra ID ----------------------------------
    hub_connection_string: SecretStr | None = Field(
        None,
        title="Event hub connection string",
        description="Connection string of the event hub (event hub > Shared access policies, a policy with the Listen "
        "claim). Leave empty to use Entra ID with `fully_qualified_namespace`.",
    )
    hub_name: str | None = Field(
        None,
        title="Event hub name",
        description="Name of the event hub (optional when the connection string has an EntityPath)",
    )
    hub_consumer_group: str = Field(
        DEFAULT_CONSUMER_GROUP,
        title="Consumer group",
        description="Consumer group to read with; give this trigger a consumer group of its own",
    )
    fully_qualified_namespace: str | None = Field(
        None,
        title="Event Hubs namespace",
        description="Entra ID authentication: the namespace, e.g. mynamespace.servicebus.windows.net (role Azure "
        "Event Hubs Data Receiver)",
    )
    tenant_id: str | None = Field(
        None, title="Tenant ID", description="Entra ID authentication: directory (tenant) ID of the application"
    )
    client_id: str | None = Field(
        None,
        title="Client ID",
        description="Entra ID authentication: application (client) ID, or the client ID of a user-assigned managed "
        "identity",
    )
    client_secret: SecretStr | None = Field(
        None, title="Client secret", description="Entra ID authentication: client secret of the application"
    )
    certificate: SecretStr | None = Field(
        None,
        title="Certificate",
        description="Entra ID authentication: PEM certificate with its private key, instead of a client secret",
    )
    certificate_password: SecretStr | None = Field(
        None, title="Certificate password", description="Password of the certificate's private key, if any"
    )
    cloud: Literal["public", "usgov", "china"] = Field(
        "public",
        title="Azure cloud",
        description="Azure cloud of the namespace and storage account: `public`, `usgov` (Azure US Government) or "
        "`china` (Azure operated by 21Vianet). Sets the Entra ID authority and the suffix added to a namespace or "
        "storage account given by its name alone",
    )
    custom_endpoint_address: str | None = Field(
        None,
        title="Custom endpoint address",
        description="Connect to this address instead of the namespace's, e.g. sb://10.1.2.3 or "
        "sb://gateway.example.com:5671 (a private endpoint's IP, an application gateway); the namespace still "
        "names the hub in tokens and checkpoints",
    )

    # -- checkpoints: Azure Blob Storage (shared, load balanced) or the local state store (one instance) ----------
    storage_connection_string: SecretStr | None = Field(
        None,
        title="Storage connection string",
        description="Connection string of the Azure Storage account keeping the checkpoints (storage account > Access "
        "keys). Without storage, checkpoints stay in the trigger's local state, for one instance only.",
    )
    storage_account_url: str | None = Field(
        None,
        title="Storage account URL",
        description="Entra ID authentication to the storage account: https://ACCOUNT.blob.core.windows.net or the "
        "account's name (role Storage Blob Data Contributor), instead of a storage connection string; a URL "
        "with a SAS token (?sv=...&sig=...) needs no Entra ID",
    )
    storage_container_name: str | None = Field(
        None,
        title="Storage container name",
        description="Existing blob container for the checkpoints and partition ownership (required with a storage "
        "account)",
    )

    # -- reading ------------------------------------------------------------------------------------------------
    starting_position: str = Field(
        "earliest",
        title="Starting position",
        description="Where to start in a partition that has no checkpoint yet: `earliest` (everything retained), "
        "`latest` (only new events) or an ISO 8601 time such as 2026-01-31T08:00:00Z",
    )
    categories: list[str] | None = Field(
        None,
        title="Categories",
        description="Forward only the records whose `category` is one of these (e.g. SignInLogs, AuditLogs); records "
        "without a category are always forwarded. Empty: every record.",
    )
    max_batch_size: int = Field(
        100,
        ge=1,
        le=5_000,
        validation_alias=AliasChoices("max_batch_size", "chunk_size"),
        title="Messages read at once",
        description="Largest number of Event Hubs messages read from a partition at once (the former `chunk_size`)",
    )
    max_wait_time: float | None = Field(
        None,
        gt=0,
        le=300,
        title="Maximum wait (seconds)",
        description="Seconds a record may wait for a fuller batch before it is sent (default 1)",
    )
    prefetch: int = Field(
        300,
        ge=10,
        le=5_000,
        title="Prefetch (messages)",
        description="Messages buffered per partition read. Memory is about (prefetch + max_batch_size) x message size "
        "x partitions read: lower it (e.g. 30) when diagnostic settings send messages close to 1 MB",
    )
    use_websockets: bool = Field(
        False,
        title="Use WebSockets",
        description="Speak AMQP over WebSockets (port 443) instead of AMQP (port 5671), e.g. behind a firewall",
    )
    http_proxy: SecretStr | None = Field(
        None, title="HTTP proxy", description="HTTP proxy, http://[user:password@]host:port; implies WebSockets"
    )
    load_balancing_interval: float = Field(
        30.0,
        ge=1,
        le=600,
        title="Load-balancing interval (seconds)",
        description="Seconds between partition load-balancing rounds between instances sharing the storage "
        "container; a stopped instance's partitions are taken over after six rounds",
    )

    secret_fields: ClassVar[tuple[str, ...]] = (
        "intake_key",
        "hub_connection_string",
        "storage_connection_string",
        "client_secret",
        "certificate",
        "certificate_password",
        "http_proxy",
        "storage_account_url",  # it may carry a SAS token
    )

    @field_validator("categories", mode="before")
    @classmethod
    def _split_categories(cls, value: Any) -> Any:
        if isinstance(value, str):  # "SignInLogs, AuditLogs" is accepted as well as a list
            value = [item for item in value.replace(";", ",").split(",")]
        if isinstance(value, list):
            value = [str(item).strip() for item in value if str(item).strip()] or None
        return value

    @field_validator("hub_connection_string", "storage_connection_string", "hub_name", "storage_container_name",
                     "fully_qualified_namespace", "storage_account_url", "client_secret", "certificate",
                     "http_proxy", "tenant_id", "client_id", "custom_endpoint_address", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cloud", mode="before")
    @classmethod
    def _normalise_cloud(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return "public"
        text = str(value).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
        return _CLOUD_ALIASES.get(text, text)

    @model_validator(mode="after")
    def _check(self) -> "EventHubConfiguration":
        # ConfigurationError (not ValueError) so the message names the field the user has to fix.
        if self.max_wait_time is not None:
            self.batch_max_age_seconds = self.max_wait_time
        if not self.hub_consumer_group.strip():
            self.hub_consumer_group = DEFAULT_CONSUMER_GROUP
        self._check_hub()
        self._check_storage()
        parse_starting_position(self.starting_position)
        if self.http_proxy:
            proxy_settings(reveal(self.http_proxy))
        return self

    def _check_hub(self) -> None:
        if self.hub_connection_string:
            fields = connection_string_fields(reveal(self.hub_connection_string))
            if "endpoint" not in fields or not (
                "sharedaccesskey" in fields or "sharedaccesssignature" in fields
            ):
                raise ConfigurationError(
                    "hub_connection_string",
                    "expected `Endpoint=sb://NAMESPACE.servicebus.windows.net/;SharedAccessKeyName=NAME;"
                    "SharedAccessKey=KEY[;EntityPath=HUB]` (event hub > Shared access policies, a policy with Listen)",
                )
            entity = fields.get("entitypath")
            if entity and self.hub_name and entity != self.hub_name:
                raise ConfigurationError(
                    "hub_name", f"`{self.hub_name}` differs from the connection string's EntityPath `{entity}`"
                )
            self.hub_name = self.hub_name or entity
        elif self.fully_qualified_namespace:
            self.fully_qualified_namespace = self._in_cloud(self.fully_qualified_namespace.strip(), "namespace",
                                                            "fully_qualified_namespace")
            if not (self.client_id and self.tenant_id) and (self.client_secret or self.certificate):
                field = "tenant_id" if not self.tenant_id else "client_id"
                raise ConfigurationError(field, "required with a client secret or a certificate")
        else:
            raise ConfigurationError(
                "hub_connection_string",
                "is required (or `fully_qualified_namespace` with Entra ID credentials: tenant_id, client_id and "
                "client_secret or certificate, or a managed identity)",
            )
        if not self.hub_name:
            raise ConfigurationError("hub_name", "is required (the event hub's name, e.g. `insights-logs`)")

    def _check_storage(self) -> None:
        if self.storage_connection_string:
            fields = connection_string_fields(reveal(self.storage_connection_string))
            if "usedevelopmentstorage" in fields:
                raise ConfigurationError(
                    "storage_connection_string",
                    "UseDevelopmentStorage is not supported: give AccountName, AccountKey and BlobEndpoint",
                )
            if not ("accountname" in fields or "blobendpoint" in fields):
                raise ConfigurationError(
                    "storage_connection_string",
                    "expected `DefaultEndpointsProtocol=https;AccountName=NAME;AccountKey=KEY;"
                    "EndpointSuffix=core.windows.net` (storage account > Access keys)",
                )
        if self.storage_account_url:
            url = self.storage_account_url.strip().rstrip("/")
            if "://" not in url:  # the account's name, or its host
                url = f"https://{self._in_cloud(url, 'storage', 'storage_account_url')}"
            self.storage_account_url = url
        if (self.storage_connection_string or self.storage_account_url) and not self.storage_container_name:
            raise ConfigurationError("storage_container_name", "is required with a storage account")
        if self.storage_container_name and not (self.storage_connection_string or self.storage_account_url):
            raise ConfigurationError(
                "storage_connection_string", "is required with `storage_container_name` (or `storage_account_url`)"
            )
        if (self.storage_account_url and not self.storage_sas and not self.storage_connection_string
                and not self.fully_qualified_namespace):
            raise ConfigurationError(
                "storage_account_url", "needs Entra ID credentials or a SAS token (?sv=...&sig=...); use "
                "`storage_connection_string` otherwise"
            )

    def _in_cloud(self, host: str, kind: Literal["namespace", "storage"], field: str) -> str:
        """A name alone gets the cloud's suffix; a host of another known cloud is refused (its tokens would come
        from the wrong authority)."""
        endpoints = CLOUDS[self.cloud]
        if "." not in host:
            return f"{host}.{endpoints.namespace_suffix}" if kind == "namespace" else \
                f"{host}.blob.{endpoints.storage_suffix}"
        bare = host.split(":")[0].lower()
        for cloud, other in CLOUDS.items():
            other_suffix = other.namespace_suffix if kind == "namespace" else other.storage_suffix
            if cloud != self.cloud and bare.endswith("." + other_suffix):
                raise ConfigurationError(field, f"`{host}` is in the Azure cloud `{cloud}` while `cloud` is "
                                                f"`{self.cloud}`: set `cloud` to `{cloud}`")
        return host

    # -- derived ------------------------------------------------------------------------------------------------

    @property
    def uses_storage(self) -> bool:
        return bool(self.storage_connection_string or self.storage_account_url)

    @property
    def namespace_host(self) -> str:
        """The namespace as written in checkpoints and messages (no key in it)."""
        if self.hub_connection_string:
            endpoint = connection_string_fields(reveal(self.hub_connection_string))["endpoint"]
            return urlsplit(endpoint if "://" in endpoint else f"sb://{endpoint}").netloc or endpoint
        return self.fully_qualified_namespace or ""

    @property
    def storage_sas(self) -> bool:
        """The storage account URL carries a SAS token (it is its own credential)."""
        return bool(self.storage_account_url and "sig=" in urlsplit(self.storage_account_url).query)

    @property
    def authority_host(self) -> str:
        """Where Entra ID tokens come from: AZURE_AUTHORITY_HOST (a private authority, azure-identity's variable),
        else the cloud's."""
        return (os.environ.get("AZURE_AUTHORITY_HOST") or CLOUDS[self.cloud].authority).rstrip("/")

    @property
    def credential_kind(self) -> Literal["connection_string", "client_secret", "certificate", "workload_identity",
                                         "managed_identity"]:
        if self.hub_connection_string:
            return "connection_string"
        if self.client_secret:
            return "client_secret"
        if self.certificate:
            return "certificate"
        if os.environ.get("AZURE_FEDERATED_TOKEN_FILE") and self.client_id and self.tenant_id:
            return "workload_identity"  # AKS workload identity: the pod's service account token, exchanged
        return "managed_identity"


def parse_starting_position(value: str) -> str | datetime:
    """``-1`` (earliest), ``@latest``, or an aware datetime: the client's own starting-position values."""
    text = value.strip()
    lowered = text.lower()
    if lowered in {"earliest", "-1", "start", "beginning"}:
        return "-1"
    if lowered in {"latest", "@latest", "end"}:
        return "@latest"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            "starting_position", "expected `earliest`, `latest` or an ISO 8601 time such as 2026-01-31T08:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def proxy_settings(url: str) -> dict[str, Any]:
    """The client's ``http_proxy`` dictionary from a proxy URL."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname or not parts.port:
        raise ConfigurationError("http_proxy", "expected http://[user:password@]host:port")
    settings: dict[str, Any] = {"proxy_hostname": parts.hostname, "proxy_port": parts.port}
    if parts.username:
        settings["username"] = unquote(parts.username)
        settings["password"] = unquote(parts.password or "")
    return settings
