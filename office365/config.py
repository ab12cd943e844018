"""Configuration of the Office 365 trigger: identities, cloud, content types, and the tuning knobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from connectors.errors import ConfigurationError
from connectors.secrets import reveal
from connectors.trigger import CollectorConfiguration

CONTENT_TYPES = (
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
)
_CONTENT_TYPES_BY_LOWER = {name.lower(): name for name in CONTENT_TYPES}

Cloud = Literal["enterprise", "gcc", "gcc_high", "dod"]

# cloud -> (Entra authority host, Management API resource, which is also the API host)
CLOUDS: dict[str, tuple[str, str]] = {
    "enterprise": ("https://login.microsoftonline.com", "https://manage.office.com"),
    "gcc": ("https://login.microsoftonline.com", "https://manage-gcc.office.com"),
    "gcc_high": ("https://login.microsoftonline.us", "https://manage.office365.us"),
    "dod": ("https://login.microsoftonline.us", "https://manage.protection.apps.mil"),
}


def _guid(value: str) -> str:
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise ValueError("expected a GUID such as 0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d") from None


def _https_url(value: str | None) -> str | None:
    if value is None or not str(value).strip():
        return None
    value = str(value).strip().rstrip("/")
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError("expected an https:// URL (Microsoft's clients refuse plain http)")
    return value


class Office365Configuration(CollectorConfiguration):
    tenant_id: str = Field(
        title="Tenant ID", description="Directory (tenant) ID of the Microsoft Entra tenant (a GUID)"
    )
    client_id: str = Field(
        title="Client ID",
        description="Application (client) ID of the app registration that holds the Office 365 Management API "
        "permission ActivityFeed.Read (and ActivityFeed.ReadDlp for DLP.All)",
    )
    # SecretStr: a configuration printed by mistake does not show its secrets.
    client_secret: SecretStr | None = Field(
        None,
        title="Client secret",
        description="Value of a client secret of the app registration. Give it, or a certificate and its private key",
    )
    certificate: str | None = Field(
        None,
        title="Certificate",
        description="PEM certificate registered on the app registration, used instead of a client secret",
    )
    private_key: SecretStr | None = Field(
        None, title="Private key", description="PEM private key of the certificate"
    )
    private_key_password: SecretStr | None = Field(
        None, title="Private key password", description="Password of the private key, when it is encrypted"
    )
    cloud: Cloud = Field(
        "enterprise",
        title="Cloud",
        description="Microsoft 365 cloud of the tenant: enterprise (and GCC) sign in at login.microsoftonline.com, GCC "
        "High and DoD at login.microsoftonline.us; each has its own Management API host",
    )
    content_types: list[str] = Field(
        default_factory=lambda: list(CONTENT_TYPES),
        title="Content types",
        description="Content types to collect (all five by default)",
        # The validator accepts any case and a comma-separated string; the schema shows the canonical names.
        json_schema_extra={"items": {"type": "string", "enum": list(CONTENT_TYPES)}, "uniqueItems": True},
    )
    publisher_identifier: str | None = Field(
        None,
        title="Publisher identifier",
        description="GUID sent as PublisherIdentifier on every request; it selects the throttling quota. Defaults to "
        "the tenant ID",
    )
    login_url: str | None = Field(
        None, title="Login URL", description="Override of the Microsoft Entra authority host (https), e.g. for a proxy"
    )
    management_url: str | None = Field(
        None,
        title="Management API URL",
        description="Override of the Management Activity API host (https), e.g. for a proxy",
    )

    # Tuning
    max_concurrency: int = Field(
        32,
        ge=1,
        le=256,
        title="Maximum concurrency",
        description="Most requests in flight at once; the trigger adapts below it when the API slows down or throttles",
    )
    max_requests_per_minute: int | None = Field(
        None,
        ge=10,
        title="Maximum requests per minute",
        description="Cap on requests per minute (unset: paced automatically under the quota the API shows)",
    )
    initial_lookback_hours: float = Field(
        168.0,
        ge=0,
        le=168,
        title="Initial lookback (hours)",
        description="At the first start, how far back to collect (the API keeps content 7 days)",
    )
    relist_hours: float = Field(
        24.0,
        ge=0,
        le=168,
        title="Re-list window (hours)",
        description="How far back the periodic re-listing looks for content that became available late",
    )
    relist_interval_minutes: float = Field(
        12.0, gt=0, title="Re-list interval (minutes)", description="How often the recent windows are listed again"
    )
    deep_relist_minutes: float = Field(
        240.0,
        ge=0,
        title="Full re-list interval (minutes)",
        description="How often the whole 7 days are listed again (0: never)",
    )
    poll_interval_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        title="Poll interval (seconds)",
        description="Pause between two listings of new content",
    )
    request_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        title="Request timeout (seconds)",
        description="How long a request to the Management API or to Microsoft Entra may go without receiving a "
        "byte before it is given up and retried; a large blob that keeps arriving takes as long as it needs",
    )
    max_pending_blobs: int = Field(
        2000,
        ge=10,
        le=100_000,
        title="Maximum pending blobs",
        description="Per content type, how many listed blobs may wait for delivery before listing pauses",
    )
    record_filter_size: int = Field(
        200_000,
        ge=0,
        le=5_000_000,
        title="Record filter size",
        description="How many recent records are remembered to forward a record repeated in a later blob only once "
        "(0: off)",
    )
    expiry_warning_hours: float = Field(
        24.0,
        ge=0,
        le=167,
        title="Expiry warning (hours)",
        description="Warn when the oldest pending content expires within this many hours",
    )

    secret_fields: ClassVar[tuple[str, ...]] = ("intake_key", "client_secret", "private_key", "private_key_password")

    @field_validator("tenant_id", "client_id")
    @classmethod
    def _check_guid(cls, value: str) -> str:
        return _guid(value)

    @field_validator("publisher_identifier")
    @classmethod
    def _check_publisher(cls, value: str | None) -> str | None:
        return _guid(value) if value else None

    @field_validator("login_url", "management_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return _https_url(value)

    @field_validator("cloud", mode="before")
    @classmethod
    def _normalise_cloud(cls, value):
        return str(value).strip().lower().replace("-", "_").replace(" ", "_") if value else "enterprise"

    @field_validator("content_types", mode="before")
    @classmethod
    def _check_content_types(cls, value):
        if value is None or value == "" or value == []:
            return list(CONTENT_TYPES)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError("expected a list of content types")
        result: list[str] = []
        for item in items:
            name = _CONTENT_TYPES_BY_LOWER.get(str(item).strip().lower())
            if name is None:
                raise ValueError(
                    f"unknown content type {str(item)[:60]!r}; expected some of {', '.join(CONTENT_TYPES)}"
                )
            if name not in result:
                result.append(name)
        return result


@dataclass(frozen=True)
class Credential:
    """What MSAL needs: a secret, or a certificate and its private key."""

    client_secret: str | None = field(default=None, repr=False)
    private_key_pem: str | None = field(default=None, repr=False)
    certificate_pem: str | None = None

    def for_msal(self):
        if self.client_secret is not None:
            return self.client_secret
        # Given the certificate, MSAL signs PS256 with x5t#S256 (current Entra docs).
        return {"private_key": self.private_key_pem, "public_certificate": self.certificate_pem}


def resolve_credential(config: Office365Configuration) -> Credential:
    """Validated at start, after the runtime's secrets were applied: names the field that is wrong."""
    if config.certificate or config.private_key:
        if not config.certificate:
            raise ConfigurationError("certificate", "required with `private_key` (the PEM certificate of the app)")
        if not config.private_key:
            raise ConfigurationError("private_key", "required with `certificate` (the PEM private key)")
        # Here only: cryptography's imports are heavy, and a secret credential would pay them at every start for
        # nothing.
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            cert = x509.load_pem_x509_certificate(config.certificate.strip().encode())
        except ValueError:
            raise ConfigurationError(
                "certificate", "does not parse as a PEM certificate (-----BEGIN CERTIFICATE-----)"
            ) from None
        password = reveal(config.private_key_password).encode() if config.private_key_password else None
        try:
            key = serialization.load_pem_private_key(reveal(config.private_key).strip().encode(), password=password)
        except TypeError:
            raise ConfigurationError(
                "private_key_password", "the private key is encrypted: give its password"
            ) from None
        except ValueError:
            raise ConfigurationError(
                "private_key", "does not parse as a PEM private key (or `private_key_password` is wrong)"
            ) from None
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise ConfigurationError("private_key", "does not belong to `certificate`")
        # MSAL expects an unencrypted PEM; re-encode so a password-protected key works too.
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return Credential(private_key_pem=pem, certificate_pem=config.certificate.strip())
    if config.client_secret:
        return Credential(client_secret=reveal(config.client_secret))
    raise ConfigurationError("client_secret", "required, or give `certificate` and `private_key` instead")


@dataclass(frozen=True)
class Endpoints:
    authority: str  # https://login.../{tenant}
    scope: str  # {resource}/.default
    feed: str  # https://manage.../api/v1.0/{tenant}/activity/feed
    publisher_identifier: str
    custom_login: bool


def resolve_endpoints(config: Office365Configuration) -> Endpoints:
    login_host, resource = CLOUDS[config.cloud]
    management = config.management_url or resource
    if "/activity/feed" in management:
        feed = management
    elif "/api/v1.0" in management:
        feed = f"{management}/{config.tenant_id}/activity/feed"
    else:
        feed = f"{management}/api/v1.0/{config.tenant_id}/activity/feed"
    return Endpoints(
        authority=f"{config.login_url or login_host}/{config.tenant_id}",
        scope=f"{resource}/.default",
        feed=feed,
        publisher_identifier=config.publisher_identifier or config.tenant_id,
        custom_login=config.login_url is not None,
    )
